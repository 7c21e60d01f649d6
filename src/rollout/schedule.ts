import ms from 'ms'
import { parsePercent, PERCENT_RULE } from './values.ts'

/**
 * One step of a ramp: the percentage to set (reads), optionally the write dial to set with it, and how long it
 * must bake healthy before the next one. A step without `writePercent` leaves the write dial as it is.
 */
export interface RampStep {
  percent: number
  writePercent?: number
  bakeMs: number
}

export type ScheduleStatus = 'running' | 'paused' | 'aborted' | 'done'

/** A ramp schedule as it lives in Redis (one JSON string), so that it survives restarts and handovers. */
export interface Schedule {
  steps: RampStep[]
  /** Index of the step in force; -1 until a runner takes the first one. */
  step: number
  status: ScheduleStatus
  /** The percentage the schedule last set; the dial moving away from it (by hand) pauses the schedule. */
  percent: number | null
  /** The write dial the schedule last set (null while it has set none); moved by hand, it pauses the schedule too. */
  writePercent?: number | null
  /** When the step in force was taken (ms). */
  stepAt: number | null
  /** Start of the current healthy bake (ms); null while held (paused, frozen) until a runner restarts it. */
  bakeFrom: number | null
  /** Why the bake is held, or why the schedule ended. */
  note: string
  by: string
  createdAt: number
  updatedAt: number
}

/** The longest bake accepted: a step can bake for a long weekend, not forever. */
const MAX_BAKE_MS = 30 * 86_400_000

/** A bake duration such as `30m`, `48h`, `90s`, `500ms` or `2d`; undefined when it is anything else. */
export function parseDuration (text: string): number | undefined {
  if (!/^\d+(\.\d+)?\s*(ms|s|m|h|d)$/.test(text.trim())) return undefined
  const value = ms(text.trim() as ms.StringValue)
  return Number.isFinite(value) && value >= 0 && value <= MAX_BAKE_MS ? value : undefined
}

export const DURATION_RULE = 'a duration such as 500ms, 90s, 30m, 48h or 2d (at most 30d)'

/**
 * Parses the steps of `dbshift ramp 1 5 20:48h 50 100 --bake 30m` or, stepping reads and writes,
 * `dbshift ramp 5/0 20/5 50/5:48h 100/100`: each step is a percentage (reads), optionally `/` the write dial, then
 * optionally its own bake after a colon. Returns the steps, or a message saying what is wrong.
 */
export function parseSteps (args: string[], defaultBake: string): RampStep[] | string {
  const bakeMs = parseDuration(defaultBake)
  if (bakeMs === undefined) return `--bake "${defaultBake}" must be ${DURATION_RULE}`
  if (args.length === 0) return 'give at least one step, e.g. dbshift ramp 1 5 20 50 100 --bake 30m'
  const steps: RampStep[] = []
  let writes: number | undefined
  for (const arg of args) {
    const [dials = '', bakeText, extra] = arg.split(':')
    const [percentText = '', writeText, extraDial] = dials.split('/')
    const percent = parsePercent(percentText)
    if (percent === undefined || extra !== undefined || extraDial !== undefined) return `step "${arg}": the percentage must be ${PERCENT_RULE}, optionally followed by /<writes> and :<bake>, e.g. 20:48h or 20/5:48h`
    const writePercent = writeText === undefined ? undefined : parsePercent(writeText)
    if (writeText !== undefined && writePercent === undefined) return `step "${arg}": the write dial after "/" must be ${PERCENT_RULE}`
    if (writePercent !== undefined && writePercent > percent) return `step "${arg}": writes cannot go ahead of reads (${writePercent}% > ${percent}%)`
    const stepBake = bakeText === undefined ? bakeMs : parseDuration(bakeText)
    if (stepBake === undefined) return `step "${arg}": the bake must be ${DURATION_RULE}`
    const previous = steps.at(-1)
    if (previous !== undefined) {
      if (percent < previous.percent) return `step "${arg}": steps must rise (${previous.percent}% came before it)`
      if (writePercent !== undefined && writes !== undefined && writePercent < writes) return `step "${arg}": the write dial must not fall (writes ${writes}% came before it)`
      const writesRise = writePercent !== undefined && (writes === undefined || writePercent > writes)
      if (percent === previous.percent && !writesRise) return `step "${arg}": steps must rise (${previous.percent}% came before it)`
    }
    if (writePercent !== undefined) writes = writePercent
    steps.push(writePercent === undefined ? { percent, bakeMs: stepBake } : { percent, writePercent, bakeMs: stepBake })
  }
  return steps
}

/** The write dial as it acts: missing, it is the same as `percent`; above it, it changes nothing. */
export function effectiveWrites (percent: number, writePercent: number | undefined): number {
  return writePercent === undefined ? percent : Math.min(writePercent, percent)
}

/**
 * Whether a step can be taken with the dials where they are: it never lowers either (a schedule never moves users
 * back) and, unless it is the first step taken, it raises at least one.
 */
export function stepAhead (step: RampStep, percent: number, writePercent: number | undefined, first: boolean): boolean {
  const writes = effectiveWrites(percent, writePercent)
  if (step.percent < percent) return false
  if (step.writePercent !== undefined && step.writePercent < writes) return false
  if (first) return true
  return step.percent > percent || (step.writePercent !== undefined && step.writePercent > (writePercent ?? percent))
}

export function isActive (schedule: Schedule | undefined): schedule is Schedule {
  return schedule !== undefined && (schedule.status === 'running' || schedule.status === 'paused')
}

/** `1% → 5% → 20% (48h) → 100%, bake 30m`: the plan in one line. */
export function describePlan (steps: RampStep[]): string {
  const common = mostCommon(steps.slice(0, -1).map((step) => step.bakeMs)) ?? 0
  const parts = steps.map((step, i) => i < steps.length - 1 && step.bakeMs !== common ? `${dials(step)} (${ms(step.bakeMs)})` : dials(step))
  return `${parts.join(' → ')}${steps.length > 1 ? `, bake ${ms(common)}` : ''}`
}

/** Where the schedule is, in one line: `step 3 of 5 (20%), baked 12m of 48h`. */
export function describeProgress (schedule: Schedule, now: number): string {
  const total = schedule.steps.length
  const last = schedule.steps.at(-1)
  if (schedule.status === 'done') return `done: ${last === undefined ? '?' : dials(last)} reached`
  if (schedule.status === 'aborted') return `aborted ${schedule.step < 0 ? 'before step 1' : `at step ${schedule.step + 1}`} of ${total}: ${schedule.note}`
  if (schedule.step < 0) return `${schedule.status}, waiting for a dbshift instance to take step 1 of ${total} (${schedule.steps[0] === undefined ? '?' : dials(schedule.steps[0])})`
  const step = schedule.steps[schedule.step] as RampStep
  const next = schedule.steps[schedule.step + 1]
  const where = `step ${schedule.step + 1} of ${total} (${dials({ percent: schedule.percent ?? step.percent, writePercent: schedule.writePercent ?? step.writePercent })})`
  if (schedule.status === 'paused') return `paused at ${where}: ${schedule.note}`
  if (schedule.bakeFrom === null) return `held at ${where}: ${schedule.note || 'the bake restarts on the next check'}`
  const baked = Math.max(0, now - schedule.bakeFrom)
  return `running: ${where}, baked ${ms(Math.min(baked, step.bakeMs))} of ${ms(step.bakeMs)}${next === undefined ? '' : `, then ${dials(next)}`}`
}

/** Parses the stored JSON; undefined when it is missing or not a schedule (a hand-made value is ignored). */
export function decodeSchedule (text: string | null): Schedule | undefined {
  if (text === null || text === '') return undefined
  try {
    const value = JSON.parse(text) as Schedule
    return Array.isArray(value.steps) && typeof value.step === 'number' && typeof value.status === 'string' ? value : undefined
  } catch {
    return undefined
  }
}

/** `20%`, or `reads 20% writes 5%` for a step that sets the write dial too. */
function dials (step: { percent: number, writePercent?: number | undefined }): string {
  return step.writePercent === undefined ? `${step.percent}%` : `reads ${step.percent}% writes ${step.writePercent}%`
}

function mostCommon (values: number[]): number | undefined {
  const counts = new Map<number, number>()
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1)
  let best: number | undefined
  for (const [value, count] of counts) if (best === undefined || count > (counts.get(best) ?? 0)) best = value
  return best
}
