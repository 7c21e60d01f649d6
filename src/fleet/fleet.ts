import type { RolloutKeys } from '../rollout/keys.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { InstanceBeat } from './heartbeat.ts'

/** An instance of the fleet view, with what an operator needs to know about it. */
export interface FleetMember extends InstanceBeat {
  /** Why this instance does not follow the shared state, or null when it does. */
  behind: string | null
}

/** An instance that has not read Redis for this long is flagged even when its state still matches. */
export const STALE_SYNC_MS = 5_000

/** The state every instance should apply; undefined where Redis holds an invalid value (each keeps its last valid one). */
export interface SharedDial {
  percent: number | undefined
  state: string | undefined
}

/**
 * The live instances (expired beats left out) and, for each, whether it lags behind the shared state:
 * another percentage or state than Redis holds, a rollback not yet written, or no read of Redis for a while.
 */
export async function readFleet (redis: RedisClient, keys: RolloutKeys, shared: SharedDial, now: number): Promise<FleetMember[]> {
  const raw = await redis.hgetall(keys.instances)
  const members: FleetMember[] = []
  for (const text of Object.values(raw)) {
    let beat: InstanceBeat
    try {
      beat = JSON.parse(text) as InstanceBeat
    } catch {
      continue
    }
    if (typeof beat.id !== 'string' || !(beat.expiresAt >= now)) continue
    members.push({ ...beat, behind: lag(beat, shared) })
  }
  return members.sort((a, b) => a.id.localeCompare(b.id))
}

function lag (beat: InstanceBeat, shared: SharedDial): string | null {
  if (beat.rollbackPending) return 'rolled back locally; not yet written to Redis'
  if (shared.state !== undefined && beat.state !== shared.state) return `applies state ${beat.state}, Redis has ${shared.state}`
  if (shared.percent !== undefined && beat.percent !== shared.percent) return `applies ${beat.percent}%, Redis has ${shared.percent}%`
  if (beat.lastSyncAt === 0) return 'has never read Redis'
  if (beat.at - beat.lastSyncAt > STALE_SYNC_MS) return `has not read Redis for ${Math.round((beat.at - beat.lastSyncAt) / 1000)} s`
  return null
}
