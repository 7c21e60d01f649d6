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

/** A dial change of `set --writes` or `set --route`: `null` deletes the dial, so that it follows `percent` again. */
export interface DialArg {
  route: string | undefined
  percent: number | null
}

/** `--writes <percent|follow>`, `--route <name>=<percent|follow>`: validated before anything connects. */
export function parseDialArg (option: '--writes' | '--route', text: string): DialArg {
  let route: string | undefined
  let value = text
  if (option === '--route') {
    const eq = text.indexOf('=')
    if (eq < 1) throw new InvalidValueError(`--route "${text}" must be <name>=<percent> or <name>=follow, e.g. --route reports=2`)
    route = text.slice(0, eq)
    value = text.slice(eq + 1)
  }
  if (value === 'follow') return { route, percent: null }
  const percent = parsePercent(value)
  if (percent === undefined || value.trim() !== value) {
    throw new InvalidValueError(`${option} "${text}" is not a percentage: it must be ${PERCENT_RULE}, or follow (the dial follows percent again), e.g. dbshift set ${option} ${option === '--route' ? 'reports=2' : '5'}`)
  }
  return { route, percent }
}

/**
 * `dbshift set [percent] [--writes p] [--route name=p]`: turns the dials, the percentage first. Each is its own
 * change (and audit entry); one that is refused stops the rest with its exit status.
 */
export async function setDials (ctx: CliContext, percent: number | undefined, dials: DialArg[], reason: string, waitMs?: number): Promise<boolean> {
  const human: string[] = []
  const json: Record<string, unknown> = {}
  if (percent !== undefined) {
    const { status, previous, state } = unwrap(await ctx.control.setPercent(percent, ctx.actor, reason))
    const note = state === 'rolled_back' ? '\nnote: the rollout is rolled back, so everyone stays on legacy until "dbshift resume"' : ''
    human.push(status === 'noop' ? `percent already ${percent}: nothing changed${note}` : `percent ${previous ?? '(unset)'} → ${percent}${note}`)
    Object.assign(json, { percent, previous, state })
  }
  for (const dial of dials) {
    const result = unwrap(await ctx.control.setDial(dial.route, dial.percent, ctx.actor, reason))
    const shown = dial.percent === null ? '(follows percent)' : String(dial.percent)
    human.push(result.status === 'noop' ? `${result.dial} already ${shown}: nothing changed` : `${result.dial} ${result.previous ?? '(follows percent)'} → ${shown}`)
    if (dial.route === undefined) json.writePercent = { percent: dial.percent, previous: result.previous }
    else json.routes = { ...(json.routes as object | undefined), [dial.route]: { percent: dial.percent, previous: result.previous } }
  }
  return await report(ctx, human.join('\n'), json, waitMs)
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
