import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import type { AuditEntry, SharedRollout } from '../rollout/store.ts'
import type { RolloutStore } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { RolloutControl } from './commands.ts'

type Dials = SharedRollout['raw']

/** The audit actions that explain a value of each key (the last one of them names the value it set). */
const EXPLAINS: Record<keyof Dials, (entry: AuditEntry) => boolean> = {
  percent: (e) => e.fields.action === 'set_percent' || (e.fields.action === 'hand_set' && e.fields.key === 'percent'),
  state: (e) => e.fields.action === 'rollback' || e.fields.action === 'resume' || (e.fields.action === 'hand_set' && e.fields.key === 'state')
}

/** How far back the audit stream is searched for the change that explains a value. */
const LOOKBACK = 50

/**
 * Audits changes made to `percent` or `state` outside dbshift (a plain `redis-cli SET`), which the poll notices
 * on every instance. A change is hand-made when the newest audit entry for that key does not name the value now
 * in Redis; the command layer records it once for the fleet. Returns the function that stops listening.
 */
export function auditHandChanges (options: { sync: RolloutSync, store: RolloutStore, control: RolloutControl, instanceId: string, log: Logger }): () => void {
  const { sync, store, control, instanceId, log } = options
  const onDial = (raw: Dials, previous: Dials): void => {
    record(raw, previous).catch((err: unknown) => { log.warn({ err }, 'could not audit a change made by hand in Redis') })
  }
  const record = async (raw: Dials, previous: Dials): Promise<void> => {
    const changed = (['percent', 'state'] as const).filter((key) => raw[key] !== previous[key])
    if (changed.length === 0) return
    const entries = await store.audit(LOOKBACK)
    for (const key of changed) {
      const latest = entries.find(EXPLAINS[key])
      const value = raw[key] ?? ''
      if (latest?.fields.new === value) continue
      const claim = createHash('sha256').update(`${key}\0${previous[key] ?? ''}\0${value}\0${latest?.id ?? ''}`).digest('hex').slice(0, 24)
      await control.recordHandChange({ key, old: previous[key], new: raw[key], claim, noticedBy: instanceId })
    }
  }
  sync.on('dial', onDial)
  return () => { sync.off('dial', onDial) }
}
