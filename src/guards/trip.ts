import { isReady } from '../rollout/redis.ts'
import { redisHealth, type RedisState } from '../rollout/redis-health.ts'
import type { Trip } from '../rollout/store.ts'
import type { GuardContext, GuardEmitter } from './index.ts'

/**
 * What became of a trip: `tripped` (this instance's rollback is the one Redis holds), `pending` (in force here,
 * written to Redis as soon as it is reachable) or `joined` (another instance or an operator got there first:
 * still one rollback, not two).
 */
export type TripOutcome = 'tripped' | 'pending' | 'joined'

/**
 * Rolls the rollout back for a guard. Routing on this instance moves to legacy before anything is awaited
 * (safety moves never wait); the trip hash, the audit entry and the event are then written in one atomic step.
 */
export async function tripRollout (ctx: GuardContext, events: GuardEmitter, level: 'L1' | 'L3', reason: string, detail: Record<string, unknown> = {}): Promise<{ trip: Trip, outcome: TripOutcome }> {
  const trip: Trip = { level, reason, at: new Date(ctx.now()).toISOString(), by: ctx.instanceId }
  ctx.log.error({ guard: level, reason, ...detail }, `${level} guard tripped: ${reason}; routing everyone to legacy`)
  const actor = { by: ctx.instanceId, source: 'guard' as const }
  let persisted = await ctx.sync.rollbackLocally(trip, actor)
  // With Redis connected, a write that failed (a command timeout under load) is tried again before the trip is
  // called pending: whether it was this instance's rollback or another's must come from Redis, not a guess.
  for (let attempt = 0; !persisted && isReady(ctx.redis) && attempt < 3; attempt++) {
    await ctx.sync.refresh().catch(() => {})
    persisted = !ctx.sync.rollbackPending
  }
  const recorded = ctx.sync.current.trip
  const outcome: TripOutcome = !persisted ? 'pending' : recorded?.by === trip.by && recorded.at === trip.at ? 'tripped' : 'joined'
  if (outcome === 'joined') {
    ctx.log.info({ guard: level, trip: recorded }, `the rollout was already rolled back (${recorded?.level ?? '?'} by ${recorded?.by ?? '?'}); nothing more to do`)
  } else {
    ctx.metrics.guardTrips.labels(level).inc()
    if (outcome === 'pending') ctx.log.warn({ guard: level, redis: redisHealth(ctx.redis).state, reason: redisHealth(ctx.redis).reason }, pendingMessage(redisHealth(ctx.redis).state))
  }
  events.emit('trip', trip, outcome)
  return { trip, outcome }
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
