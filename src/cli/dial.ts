import { unwrap } from '../control/results.ts'
import { InvalidValueError } from '../errors.ts'
import { parsePercent, PERCENT_RULE } from '../rollout/values.ts'
import type { CliContext } from './context.ts'
import { confirmationText, waitForFleet } from './wait.ts'

/**
 * Prints the outcome of a change; with `waitMs`, first waits for every instance to apply it and adds that to the
 * output. Resolves to false when some instance did not confirm in time.
 */
async function report (ctx: CliContext, human: string, json: Record<string, unknown>, waitMs: number | undefined): Promise<boolean> {
  if (waitMs === undefined) {
    ctx.print(human, json)
    return true
  }
  const fleet = await waitForFleet(ctx, waitMs)
  ctx.print(`${human}\n${confirmationText(fleet, waitMs)}`, { ...json, fleet })
  return fleet.confirmed
}

/** Validates `set <percent>` before anything connects: bad input exits 2 with the rule. */
export function parsePercentArg (text: string): number {
  const percent = parsePercent(text)
  if (percent === undefined || text.trim() !== text) throw new InvalidValueError(`"${text}" is not a percentage: it must be ${PERCENT_RULE}, e.g. dbshift set 20`)
  return percent
}

/** `dbshift set <percent>`: turns the dial. A raise is refused while the L2 guard freezes the ramp. */
export async function set (ctx: CliContext, percent: number, reason: string, waitMs?: number): Promise<boolean> {
  const { status, previous, state } = unwrap(await ctx.control.setPercent(percent, ctx.actor, reason))
  const note = state === 'rolled_back' ? '\nnote: the rollout is rolled back, so everyone stays on legacy until "dbshift resume"' : ''
  const human = status === 'noop' ? `percent already ${percent}: nothing changed${note}` : `percent ${previous ?? '(unset)'} → ${percent}${note}`
  return await report(ctx, human, { percent, previous, state }, waitMs)
}

/** `dbshift rollback [--reason]`: everyone to legacy, fleet-wide. */
export async function rollback (ctx: CliContext, reason: string, waitMs?: number): Promise<boolean> {
  const { status, trip, fence } = unwrap(await ctx.control.rollback({ reason, force: ctx.force }, ctx.actor))
  const changed = status === 'ok'
  const fenced = fence === undefined ? '' : `\nfence ${fence.id}: the moving cohort's writes get 503 until legacy has their data ("dbshift fence" shows it)`
  return await report(ctx, changed ? `rolled back: everyone goes to legacy (${trip.reason})${fenced}` : 'already rolled back: nothing changed', { state: 'rolled_back', changed, ...(fence === undefined ? {} : { fence: fence.id }) }, waitMs)
}

/** `dbshift resume`: re-arms the rollout after a rollback (it follows the percentage again). */
export async function resume (ctx: CliContext, reason: string, waitMs?: number): Promise<boolean> {
  const { status, percent } = unwrap(await ctx.control.resume(ctx.actor, reason))
  const changed = status === 'ok'
  return await report(ctx, changed ? `resumed: the rollout follows the percentage again (${percent}%)` : 'not rolled back: nothing changed', { state: 'active', changed }, waitMs)
}
