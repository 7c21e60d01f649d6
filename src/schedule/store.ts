import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutKeys } from '../rollout/keys.ts'
import { AUDIT_MAX_LENGTH, type Actor } from '../rollout/store.ts'
import { decodeSchedule, describePlan, isActive, type RampStep, type Schedule } from './schedule.ts'

/** Why a schedule write did not happen. */
export type WriteRefusal = 'conflict' | 'rolled_back' | 'frozen'

// Compare-and-set of the schedule, with its audit entry and event; optionally the step's percentage with it, so a
// step is taken whole or not at all (never while rolled back or frozen, never over someone else's write).
const WRITE = `
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 'conflict' end
if ARGV[3] ~= '' then
  if redis.call('GET', KEYS[4]) == 'rolled_back' then return 'rolled_back' end
  if redis.call('EXISTS', KEYS[5]) == 1 then return 'frozen' end
  local old = redis.call('GET', KEYS[3])
  redis.call('SET', KEYS[3], ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'at', ARGV[6], 'action', 'set_percent', 'old', old or '', 'new', ARGV[3], 'by', ARGV[7], 'source', ARGV[8], 'reason', ARGV[10])
end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
if ARGV[9] == '' then return 'ok' end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'at', ARGV[6], 'action', ARGV[9], 'old', ARGV[11], 'new', ARGV[12], 'by', ARGV[7], 'source', ARGV[8], 'reason', ARGV[10])
redis.call('PUBLISH', ARGV[4], cjson.encode({action = ARGV[9], value = ARGV[12], by = ARGV[7], source = ARGV[8], at = ARGV[6]}))
return 'ok'
`

export interface ScheduleChange {
  /** Audit action, e.g. schedule_start, schedule_step, schedule_pause; '' writes no entry and no event. */
  action: string
  old?: string
  new?: string
  reason?: string
  /** Set this percentage in the same step (refused while rolled back or frozen). */
  percent?: number
}

/** The ramp schedule in Redis: read it, and change it atomically with its audit entry. */
export class ScheduleStore {
  readonly keys: RolloutKeys
  readonly #redis: RedisClient
  readonly #now: () => number

  constructor (redis: RedisClient, keys: RolloutKeys, now: () => number = Date.now) {
    this.#redis = redis
    this.keys = keys
    this.#now = now
  }

  /** The schedule and its raw text (the compare-and-set token). */
  async read (): Promise<{ schedule: Schedule | undefined, raw: string }> {
    const raw = await this.#redis.get(this.keys.schedule) ?? ''
    return { schedule: decodeSchedule(raw), raw }
  }

  /** Writes `next` if the schedule still is `raw`; 'ok' or why not. */
  async write (raw: string, next: Schedule | undefined, actor: Actor, change: ScheduleChange): Promise<'ok' | WriteRefusal> {
    const k = this.keys
    const at = this.#now()
    if (next !== undefined) next.updatedAt = at
    return await this.#redis.eval(WRITE, 5, k.schedule, k.audit, k.percent, k.state, k.freeze,
      raw, next === undefined ? '' : JSON.stringify(next), change.percent === undefined ? '' : String(change.percent),
      k.events, AUDIT_MAX_LENGTH, String(at), actor.by, actor.source, change.action, change.reason ?? '', change.old ?? '', change.new ?? '') as 'ok' | WriteRefusal
  }

  /** Starts a schedule; a runner takes its first step. Refused (conflict) while another one is active. */
  async start (steps: RampStep[], actor: Actor): Promise<{ result: 'ok' | WriteRefusal, schedule: Schedule }> {
    const { schedule: current, raw } = await this.read()
    const now = this.#now()
    const schedule: Schedule = { steps, step: -1, status: 'running', percent: null, stepAt: null, bakeFrom: null, note: '', by: actor.by, createdAt: now, updatedAt: now }
    if (isActive(current)) return { result: 'conflict', schedule: current }
    const result = await this.write(raw, schedule, actor, { action: 'schedule_start', new: describePlan(steps) })
    return { result, schedule }
  }

  /**
   * A guard in dry-run mode would have tripped: the bake of the step in force was not healthy, so it starts again
   * now. Only the first alarm of a bake is audited, so that an alarm repeated every second does not flood the trail.
   */
  async restartBake (why: string, actor: Actor): Promise<boolean> {
    const { schedule, raw } = await this.read()
    if (schedule?.status !== 'running' || schedule.step < 0 || schedule.bakeFrom === null) return false
    const note = `bake restarted: ${why}`
    const first = schedule.note !== note
    const result = await this.write(raw, { ...schedule, bakeFrom: this.#now(), note }, actor, {
      action: first ? 'schedule_hold' : '', old: String(schedule.percent ?? ''), new: String(schedule.percent ?? ''), reason: note
    })
    return result === 'ok'
  }

  /** Pauses, continues or aborts the active schedule. Undefined when there is none to change. */
  async control (verb: 'pause' | 'continue' | 'abort', actor: Actor, reason = '', currentPercent?: number): Promise<Schedule | undefined> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const { schedule, raw } = await this.read()
      if (!isActive(schedule)) return undefined
      const next: Schedule = { ...schedule }
      if (verb === 'pause') {
        if (schedule.status === 'paused') return schedule
        Object.assign(next, { status: 'paused', bakeFrom: null, note: `paused by ${actor.by}${reason === '' ? '' : `: ${reason}`}` })
      } else if (verb === 'continue') {
        if (schedule.status === 'running') return schedule
        // The operator accepts the dial as it is: later steps at or below it are skipped, never taken downward.
        Object.assign(next, { status: 'running', bakeFrom: null, note: '', percent: schedule.step < 0 ? null : currentPercent ?? schedule.percent })
      } else {
        Object.assign(next, { status: 'aborted', bakeFrom: null, note: `aborted by ${actor.by}${reason === '' ? '' : `: ${reason}`}` })
      }
      const result = await this.write(raw, next, actor, { action: `schedule_${verb}`, old: schedule.status, new: next.status, reason })
      if (result === 'ok') return next
    }
    throw new Error('the schedule kept changing under this command; try again')
  }
}
