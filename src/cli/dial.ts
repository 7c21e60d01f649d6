import { InvalidValueError, RampFrozenError } from '../errors.ts'
import { parsePercent, PERCENT_RULE } from '../rollout/values.ts'
import type { CliContext } from './context.ts'

/** Validates `set <percent>` before anything connects: bad input exits 2 with the rule. */
export function parsePercentArg (text: string): number {
  const percent = parsePercent(text)
  if (percent === undefined || text.trim() !== text) throw new InvalidValueError(`"${text}" is not a percentage: it must be ${PERCENT_RULE}, e.g. dbshift set 20`)
  return percent
}

/** `dbshift set <percent>`: turns the dial. A raise is refused while the L2 guard freezes the ramp. */
export async function set (ctx: CliContext, percent: number, reason: string): Promise<void> {
  const result = await ctx.store.setPercent(percent, ctx.actor, reason)
  if (!result.applied) throw new RampFrozenError(`${result.frozenBecause || 'the L2 guard froze it'}; lowering the percentage still works`)
  const state = await ctx.redis.get(ctx.keys.state)
  const previous = result.old === '' ? null : result.old
  const note = state === 'rolled_back' ? '\nnote: the rollout is rolled back, so everyone stays on legacy until "dbshift resume"' : ''
  ctx.print(`percent ${previous ?? '(unset)'} → ${percent}${note}`, { percent, previous, state: state ?? 'active' })
}

/** `dbshift rollback [--reason]`: everyone to legacy, fleet-wide. */
export async function rollback (ctx: CliContext, reason: string): Promise<void> {
  const trip = { level: 'manual', reason: reason === '' ? 'rolled back with the dbshift command' : reason, at: new Date().toISOString(), by: ctx.actor.by }
  const changed = await ctx.store.rollback(trip, ctx.actor)
  ctx.print(changed ? `rolled back: everyone goes to legacy (${trip.reason})` : 'already rolled back: nothing changed', { state: 'rolled_back', changed })
}

/** `dbshift resume`: re-arms the rollout after a rollback (it follows the percentage again). */
export async function resume (ctx: CliContext, reason: string): Promise<void> {
  const changed = await ctx.store.resume(ctx.actor, reason)
  const percent = await ctx.redis.get(ctx.keys.percent)
  ctx.print(changed ? `resumed: the rollout follows the percentage again (${percent ?? ctx.config.rollout.initialPercent}%)` : 'not rolled back: nothing changed', { state: 'active', changed })
}
