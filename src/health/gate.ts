import type { RolloutKeys } from '../rollout/keys.ts'
import type { RedisClient } from '../rollout/redis.ts'

/**
 * Why a raise onto the migrated pool is refused now, or undefined: the gate the command layer consults before
 * any raise (the dial, a ramp step). On an instance it is this instance's own view of the pool.
 */
export type RaiseGate = () => Promise<string | undefined> | string | undefined

export function localRaiseGate (migratedHealthy: () => boolean): RaiseGate {
  return () => migratedHealthy()
    ? undefined
    : 'no member of the migrated pool passes its health checks on this instance (see /status, pools.migrated); lowering the percentage still works'
}

/**
 * The gate of the `dbshift` command, which has no pools of its own: it reads the health each live instance
 * publishes in its heartbeat. A raise is refused when instances report the migrated pool and none of them sees a
 * healthy member; with no instance reporting, the command cannot know and does not refuse.
 */
export function fleetRaiseGate (redis: RedisClient, keys: RolloutKeys, now: () => number = Date.now): RaiseGate {
  return async () => {
    const beats = Object.values(await redis.hgetall(keys.instances))
    let unhealthy = 0
    for (const text of beats) {
      let beat: { expiresAt?: unknown, migratedHealthy?: unknown }
      try { beat = JSON.parse(text) as typeof beat } catch { continue }
      if (typeof beat !== 'object' || beat === null || Number(beat.expiresAt) < now()) continue
      if (beat.migratedHealthy === true) return undefined
      if (beat.migratedHealthy === false) unhealthy++
    }
    if (unhealthy === 0) return undefined
    return `none of the ${unhealthy} live instance(s) sees a healthy member of the migrated pool (see dbshift status); lowering the percentage still works`
  }
}
