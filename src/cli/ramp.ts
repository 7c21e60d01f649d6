import { unwrap } from '../control/results.ts'
import { InvalidValueError } from '../errors.ts'
import { describePlan, describeProgress, parseSteps, type RampStep } from '../rollout/schedule.ts'
import type { CliContext } from './context.ts'

export const RAMP_VERBS = ['pause', 'continue', 'abort'] as const
export type RampVerb = typeof RAMP_VERBS[number]

/** Validates the steps before anything connects: bad input exits 2. */
export function parseRampArgs (args: string[], bake: string): RampStep[] {
  const steps = parseSteps(args, bake)
  if (typeof steps === 'string') throw new InvalidValueError(steps)
  return steps
}

/** `dbshift ramp 1 5 20:48h 50 100 --bake 30m`: starts a schedule; a running dbshift instance advances it. */
export async function startRamp (ctx: CliContext, steps: RampStep[]): Promise<void> {
  const { schedule } = unwrap(await ctx.control.startRamp(steps, ctx.actor))
  ctx.print(`ramp started: ${describePlan(steps)}\nthe dbshift instance holding the schedule lease takes each step when the bake has passed with no trip and no freeze;\nfollow it with "dbshift status" or "dbshift watch"`,
    { started: true, schedule })
}

/** `dbshift ramp pause|continue|abort`. */
export async function controlRamp (ctx: CliContext, verb: RampVerb, reason: string): Promise<void> {
  const { schedule } = unwrap(await ctx.control.controlRamp(verb, ctx.actor, reason))
  ctx.print(describeProgress(schedule, Date.now()), { schedule })
}

/** `dbshift ramp` alone: where the schedule is. */
export async function showRamp (ctx: CliContext): Promise<void> {
  const { schedule } = await ctx.schedules.read()
  ctx.print(schedule === undefined ? 'no ramp schedule' : `${describePlan(schedule.steps)}\n${describeProgress(schedule, Date.now())}`,
    { schedule: schedule === undefined ? null : { ...schedule, progress: describeProgress(schedule, Date.now()) } })
}
