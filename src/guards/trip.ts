import { redisHealth, type RedisState } from '../rollout/redis-health.ts'
import type { Trip } from '../rollout/store.ts'
import type { TripOutcome } from '../control/commands.ts'
import type { GuardContext, GuardEmitter } from './events.ts'

/**
 * Rolls the rollout back for a guard, through the command layer: routing on this instance moves to legacy
 * before anything is awaited (safety moves never wait), then the trip is written with its audit entry.
 */
export async function tripRollout (ctx: GuardContext, events: GuardEmitter, level: 'L1' | 'L3', reason: string, detail: Record<string, unknown> = {}): Promise<{ trip: Trip, outcome: TripOutcome | 'frozen', fence?: string }> {
  const actor = { by: ctx.instanceId, source: 'guard' as const }
  if (ctx.sync.current.wayBack === 'none') {
    // No way back: legacy would not see migrated's writes. Freeze the ramp and alert instead of rolling back.
    const frozen = await ctx.control.freezeInstead(level, reason, actor)
    if (frozen.status === 'ok') ctx.log.error({ guard: level, reason, ...detail }, `${level} guard tripped: ${reason}; there is no way back (way_back: none), so the ramp is frozen instead of rolled back`)
    const trip: Trip = { level, reason, at: new Date(ctx.now()).toISOString(), by: ctx.instanceId }
    if (frozen.status === 'ok') events.emit('frozenInstead', level, reason)
    return { trip, outcome: 'frozen', fence: frozen.status === 'ok' ? frozen.fence : undefined }
  }
  ctx.log.error({ guard: level, reason, ...detail }, `${level} guard tripped: ${reason}; routing everyone to legacy`)
  const result = await ctx.control.rollback({ level, reason }, actor)
  // A local rollback is never refused: it applies here whatever Redis does.
  if (result.status === 'refused') throw new Error(result.message)
  const { trip, outcome } = result
  if (outcome === 'joined') {
    const recorded = ctx.sync.current.trip
    ctx.log.info({ guard: level, trip: recorded }, `the rollout was already rolled back (${recorded?.level ?? '?'} by ${recorded?.by ?? '?'}); nothing more to do`)
  } else if (outcome === 'pending') {
    const redis = redisHealth(ctx.redis)
    ctx.log.warn({ guard: level, redis: redis.state, reason: redis.reason }, pendingMessage(redis.state))
  }
  events.emit('trip', trip, outcome)
  return { trip, outcome, fence: result.fence?.id }
}

/** A dry-run guard's "would have tripped": logged and counted, nothing else. */
export function dryRunTrip (ctx: GuardContext, events: GuardEmitter, level: 'L1' | 'L2' | 'L3', reason: string, detail: Record<string, unknown> = {}): void {
  ctx.metrics.guardDryRuns.labels(level).inc()
  ctx.log.warn({ guard: level, dryRun: true, reason, ...detail }, `${level} guard would have tripped (dry run): ${reason}`)
  events.emit('dryRun', level, reason)
}

function pendingMessage (state: RedisState): string {
  return state === 'disconnected'
    ? 'Redis is unreachable: the rollback is in force on this instance and will be written to Redis when it returns'
    : 'Redis did not take the rollback (see the reason): it is in force on this instance and retried until Redis takes it'
}
