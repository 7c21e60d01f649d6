import { createHash } from 'node:crypto'
import type { Logger } from 'pino'
import type { RedisClient } from '../rollout/redis.ts'
import type { Actor, AuditEntry, RawDial, RolloutStore } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'

/** The audit actions that explain a value of each key (the last one of them names the value it set). */
const EXPLAINS: Record<keyof RawDial, (entry: AuditEntry) => boolean> = {
  percent: (e) => e.fields.action === 'set_percent' || (e.fields.action === 'hand_set' && e.fields.key === 'percent'),
  state: (e) => e.fields.action === 'rollback' || e.fields.action === 'resume' || (e.fields.action === 'hand_set' && e.fields.key === 'state')
}

/** How far back the audit stream is searched for the change that explains a value. */
const LOOKBACK = 50
/** How long the claim on a hand-made change lasts: longer than any instance takes to notice it. */
const CLAIM_MS = 60_000

const ACTOR: Actor = { by: 'by hand (not through dbshift)', source: 'redis' }

/**
 * Audits changes made to `percent` or `state` outside dbshift (a plain `redis-cli SET`), which the poll notices
 * on every instance. A change is hand-made when the newest audit entry for that key does not name the value now
 * in Redis; the instances that notice it race for one claim in Redis (SET NX), so the fleet records it once.
 */
export function auditHandChanges (options: { sync: RolloutSync, store: RolloutStore, redis: RedisClient, instanceId: string, log: Logger }): () => void {
  const { sync, store, redis, instanceId, log } = options
  const onDial = (raw: RawDial, previous: RawDial): void => {
    record(raw, previous).catch((err: unknown) => { log.warn({ err }, 'could not audit a change made by hand in Redis') })
  }
  const record = async (raw: RawDial, previous: RawDial): Promise<void> => {
    const changed = (['percent', 'state'] as const).filter((key) => raw[key] !== previous[key])
    if (changed.length === 0) return
    const entries = await store.audit(LOOKBACK)
    for (const key of changed) {
      const latest = entries.find(EXPLAINS[key])
      const value = raw[key] ?? ''
      if (latest?.fields.new === value) continue
      const id = createHash('sha256').update(`${key}\0${previous[key] ?? ''}\0${value}\0${latest?.id ?? ''}`).digest('hex').slice(0, 24)
      const claimed = await redis.set(store.keys.handChange(id), instanceId, 'PX', CLAIM_MS, 'NX')
      if (claimed !== 'OK') continue
      const redisKey = store.keys[key]
      log.info({ key: redisKey, old: previous[key], new: raw[key] }, 'a change made by hand in Redis was noticed; recorded in the audit stream')
      await store.recordAudit('hand_set', ACTOR, {
        key,
        old: previous[key] ?? '',
        new: value,
        reason: `${redisKey} changed outside dbshift${raw[key] === null ? ' (deleted)' : ''}; noticed by ${instanceId}`
      })
    }
  }
  sync.on('dial', onDial)
  return () => { sync.off('dial', onDial) }
}
