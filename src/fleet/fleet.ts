import { Cluster } from 'ioredis'
import { RolloutKeys } from '../rollout/keys.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { SharedRollout } from '../rollout/store.ts'
import type { InstanceBeat } from './heartbeat.ts'

/** An instance of the fleet view, with what an operator needs to know about it. */
export interface FleetMember extends InstanceBeat {
  /** Why this instance does not follow the shared state, or null when it does. */
  behind: string | null
}

/** An instance that has not read Redis for this long is flagged even when its state still matches. */
export const STALE_SYNC_MS = 5_000

/**
 * The live instances (expired beats left out) and, for each, whether it lags behind the shared state:
 * another percentage or state than Redis holds, a rollback not yet written, or no read of Redis for a while.
 */
export async function readFleet (redis: RedisClient, keys: RolloutKeys, shared: SharedRollout, now: number): Promise<FleetMember[]> {
  const members = liveBeats(await redis.hgetall(keys.instances), now).map((beat) => ({ ...beat, behind: lag(beat, shared) }))
  return members.sort((a, b) => a.id.localeCompare(b.id))
}

/**
 * How many live instances follow each rollout under `prefix`, from the fleet views (SCAN over every primary of
 * a cluster). Rollouts without a live instance are left out.
 */
export async function liveRollouts (redis: RedisClient, prefix: string, now: number): Promise<Map<string, number>> {
  const pattern = RolloutKeys.instancesPattern(prefix)
  const head = pattern.slice(0, pattern.indexOf('*'))
  const tail = pattern.slice(pattern.indexOf('*') + 1)
  const keys = new Set<string>()
  for (const node of redis instanceof Cluster ? redis.nodes('master') : [redis]) {
    let cursor = '0'
    do {
      const [next, found] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      cursor = next
      for (const key of found) keys.add(key)
    } while (cursor !== '0')
  }
  const live = new Map<string, number>()
  for (const key of keys) {
    const count = liveBeats(await redis.hgetall(key), now).length
    if (count > 0) live.set(key.slice(head.length, key.length - tail.length), count)
  }
  return live
}

/** The beats of a fleet view that have not expired (an unreadable one is skipped). */
function liveBeats (raw: Record<string, string>, now: number): InstanceBeat[] {
  const beats: InstanceBeat[] = []
  for (const text of Object.values(raw)) {
    let beat: InstanceBeat
    try {
      beat = JSON.parse(text) as InstanceBeat
    } catch {
      continue
    }
    if (typeof beat.id === 'string' && beat.expiresAt >= now) beats.push(beat)
  }
  return beats
}

/** Why an instance does not follow the shared state (an invalid value in Redis is no yardstick), or null. */
function lag (beat: InstanceBeat, shared: SharedRollout): string | null {
  if (beat.rollbackPending) return 'rolled back locally; not yet written to Redis'
  if (shared.found.state !== 'invalid' && beat.state !== shared.state) return `applies state ${beat.state}, Redis has ${shared.state}`
  if (shared.found.percent !== 'invalid' && beat.percent !== shared.percent) return `applies ${beat.percent}%, Redis has ${shared.percent}%`
  if (beat.lastSyncAt === 0) return 'has never read Redis'
  if (beat.at - beat.lastSyncAt > STALE_SYNC_MS) return `has not read Redis for ${Math.round((beat.at - beat.lastSyncAt) / 1000)} s`
  return null
}
