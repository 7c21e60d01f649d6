import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import type { AuditEntry, SharedRollout } from '../rollout/store.ts'
import type { RolloutStore } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { HandChangedKey, RolloutControl } from './commands.ts'

type Raw = SharedRollout['raw']

/** How far back the audit stream is searched for the change that explains a value. */
const LOOKBACK = 50

/** The audit entries that explain a value of `key` (the newest of them names the value it set). */
function explains (key: HandChangedKey): (entry: AuditEntry) => boolean {
  const handSet = (e: AuditEntry): boolean => e.fields.action === 'hand_set' && e.fields.key === key
  if (key === 'percent') return (e) => e.fields.action === 'set_percent' || handSet(e)
  if (key === 'state') return (e) => e.fields.action === 'rollback' || e.fields.action === 'resume' || handSet(e)
  if (key === 'write_percent') return (e) => e.fields.action === 'set_write_percent' || handSet(e)
  const route = key.slice('route:'.length, -':percent'.length)
  return (e) => (e.fields.action === 'set_route_percent' && e.fields.route === route) || handSet(e)
}

/** Every dial a hand can change, by its key name (as in the audit's `key` field), with its raw text. */
function dialsOf (raw: Raw, routes: readonly string[]): Map<HandChangedKey, string | null> {
  const dials = new Map<HandChangedKey, string | null>([['percent', raw.percent], ['state', raw.state], ['write_percent', raw.others[0] ?? null]])
  routes.forEach((route, i) => { dials.set(`route:${route}:percent`, raw.others[i + 1] ?? null) })
  return dials
}

/**
 * Audits changes made to `percent`, `state`, `write_percent` or a route dial outside dbshift (a plain
 * `redis-cli SET`), which the poll notices on every instance. A change is hand-made when the newest audit entry
 * for that key does not name the value now in Redis; the command layer records it once for the fleet. Returns
 * the function that stops listening.
 */
export function auditHandChanges (options: { sync: RolloutSync, store: RolloutStore, control: RolloutControl, instanceId: string, log: Logger }): () => void {
  const { sync, store, control, instanceId, log } = options
  const onDial = (raw: Raw, previous: Raw): void => {
    record(raw, previous).catch((err: unknown) => { log.warn({ err }, 'could not audit a change made by hand in Redis') })
  }
  const record = async (raw: Raw, previous: Raw): Promise<void> => {
    const before = dialsOf(previous, store.routes)
    const changed = [...dialsOf(raw, store.routes)].filter(([key, value]) => before.get(key) !== value)
    if (changed.length === 0) return
    const entries = await store.audit(LOOKBACK)
    for (const [key, now] of changed) {
      const latest = entries.find(explains(key))
      const value = now ?? ''
      if (latest?.fields.new === value) continue
      const old = before.get(key) ?? null
      const claim = createHash('sha256').update(`${key}\0${old ?? ''}\0${value}\0${latest?.id ?? ''}`).digest('hex').slice(0, 24)
      await control.recordHandChange({ key, old, new: now, claim, noticedBy: instanceId })
    }
  }
  sync.on('dial', onDial)
  return () => { sync.off('dial', onDial) }
}
