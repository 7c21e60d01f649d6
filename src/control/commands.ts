import { randomBytes } from 'node:crypto'
import type { Logger } from 'pino'
import type { Metrics } from '../metrics.ts'
import { MAX_KEY_BYTES } from '../routing/user-key.ts'
import type { RolloutKeys } from '../rollout/keys.ts'
import { isReady, type RedisClient } from '../rollout/redis.ts'
import { wrongTypeMessage, type RolloutStore, type Trip } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import { parseLag, parsePercent, parseWayBack, PERCENT_RULE, WAY_BACK_RULE, type WayBackMode } from '../rollout/values.ts'
import { judgeWayBack, type Fence, type LagReading, type ReverseLag, type WayBackVerdict } from '../rollout/way-back.ts'
import { describePlan, describeProgress, isActive, stepAhead, type RampStep, type Schedule } from '../rollout/schedule.ts'
import type { ScheduleStore } from '../rollout/schedule-store.ts'
import type { RaiseGate } from '../health/gate.ts'
import type { Actor, AuditAction } from './audit.ts'
import { Lease } from './lease.ts'
import type { Notifier } from './notify.ts'
import { refused, type CommandResult, type Refused } from './results.ts'
import { Scripts, type AuditHeader } from './scripts.ts'

/**
 * What became of a rollback: `tripped` (this one is the rollback Redis holds), `pending` (in force here,
 * written to Redis as soon as it is reachable) or `joined` (another instance or an operator got there first:
 * still one rollback, not two).
 */
export type TripOutcome = 'tripped' | 'pending' | 'joined'

/** How a fence was lifted: the reverse sync caught up, the data was restored (L3), on timeout, or by an operator. */
export type FenceRelease = 'caught_up' | 'restored' | 'timeout' | 'operator'
// A resume lifts its rollback's fence too (`how`: resume, in the audit entry).

/** The rules of the way back (guards.wayBack), with the signal poll's interval. */
export interface WayBackRules {
  maxLagSeconds: number
  fenceTimeoutMs: number
  /** One signal poll interval: how late a reading may be seen. */
  pollMs: number
}

/** Why a schedule write did not happen. */
export type WriteRefusal = 'conflict' | 'rolled_back' | 'frozen' | 'unhealthy'

export interface ScheduleChange {
  /** Audit action; undefined writes no entry and no event. */
  action?: AuditAction
  old?: string
  new?: string
  reason?: string
  /** Set this percentage in the same step (refused while rolled back or frozen). */
  percent?: number
  /** Set the write dial in the same step (refused while rolled back or frozen). */
  writePercent?: number
}

export type RampVerb = 'pause' | 'continue' | 'abort'

/** A dial a change made by hand is audited for: the `key` field of its `hand_set` entry. */
export type HandChangedKey = 'percent' | 'state' | 'write_percent' | `route:${string}:percent`

export interface ControlOptions {
  redis: RedisClient
  store: RolloutStore
  schedules: ScheduleStore
  initialPercent: number
  log: Logger
  now?: () => number
  /** On an instance: safety moves apply here before anything is awaited, and a change is re-read at once. */
  sync?: RolloutSync
  /** On an instance: rollbacks are counted in dbshift_guard_trips_total. */
  metrics?: Metrics
  notifier?: Notifier
  /**
   * The `dbshift` command: the live instances per rollout name. A change to a rollout that none follows, while
   * other rollouts have some (a mistyped --rollout), is refused.
   */
  requireFollowers?: () => Promise<Map<string, number>>
  /** Refuses a raise (the dial, a ramp step) while the migrated pool has no healthy member. */
  raiseGate?: RaiseGate
  wayBack?: WayBackRules
  /** On an instance: the readings of the reverse lag the signal poll takes. The command reads the key once. */
  reverseLag?: ReverseLag
}

const DEFAULT_WAY_BACK: WayBackRules = { maxLagSeconds: 30, fenceTimeoutMs: 30_000, pollMs: 5_000 }

/** A rollback's reason when the operator gave none, by where it came from. */
const DEFAULT_REASONS: Record<Actor['source'], string> = {
  api: 'rolled back through the admin API',
  cli: 'rolled back with the dbshift command',
  guard: 'rolled back by a guard',
  schedule: 'rolled back by the ramp schedule',
  redis: 'rolled back by hand in Redis'
}

/** How many times a rollback that failed while Redis is connected is written again before it is called pending. */
const ROLLBACK_ATTEMPTS = 3
/** How long the claim on a change made by hand lasts: longer than any instance takes to notice it. */
const HAND_CLAIM_MS = 60_000
const BY_HAND: Actor = { by: 'by hand (not through dbshift)', source: 'redis' }

/**
 * The command layer: the only writer of rollout state. Every change, from the admin API, the `dbshift` command,
 * the guards, the ramp schedule or a change noticed in Redis, is one method here that checks its preconditions,
 * runs one script (the change with its audit entry and its event) and says what became of it. A rule written
 * here holds for every caller.
 */
export class RolloutControl {
  readonly keys: RolloutKeys
  readonly #o: ControlOptions
  readonly #scripts: Scripts
  readonly #now: () => number
  /** The last raise made by hand while the way back was not ready, for /status. */
  handRaise: { at: number, value: string, warning: string } | undefined

  constructor (options: ControlOptions) {
    this.#o = options
    this.keys = options.store.keys
    this.#scripts = new Scripts(options.redis, this.keys)
    this.#now = options.now ?? Date.now
  }

  /** Turns the dial. A raise is refused while the L2 guard freezes the ramp; the same value is a no-op. */
  async setPercent (percent: number, actor: Actor, reason = ''): Promise<CommandResult<{ percent: number, previous: string | null, state: string }>> {
    if (parsePercent(String(percent)) === undefined) return refused('DBSHIFT_ERR_INVALID_VALUE', `percent must be ${PERCENT_RULE}`)
    const blocked = await this.#preconditions(actor, 'moving traffic toward migrated needs Redis; try again when it is back')
    if (blocked !== undefined) return blocked
    const unhealthy = await this.#unhealthyRaise(percent)
    if (unhealthy !== undefined) {
      this.#o.log.warn({ percent, by: actor.by, why: unhealthy }, 'refused a raise of the percentage: the migrated pool has no healthy member')
      return refused('DBSHIFT_ERR_POOL_UNHEALTHY', unhealthy)
    }
    const k = this.keys
    const notReady = await this.#wayBackProblem()
    const [done, old, frozenBecause, state] = await this.#scripts.change('dbshiftSetPercent', this.#header(actor, reason), [k.percent, k.freeze, k.state, k.wayBack],
      [String(percent), this.#o.initialPercent, notReady]) as [number, string, string, string]
    if (done === 3) {
      this.#o.log.warn({ percent, by: actor.by, why: frozenBecause }, 'refused a raise of the percentage: the way back is not ready')
      return refused('DBSHIFT_ERR_WAY_BACK_NOT_READY', `${frozenBecause}; a raise needs the reverse lag known and at most ${this.#rules.maxLagSeconds} s (lowering still works)`)
    }
    if (done === 0) {
      this.#o.log.warn({ percent, by: actor.by, frozenBecause }, 'refused a raise of the percentage: the ramp is frozen')
      return refused('DBSHIFT_ERR_RAMP_FROZEN', `${frozenBecause || 'the L2 guard froze it'}; lowering the percentage still works`)
    }
    if (done === 1) await this.#reread()
    return { status: done === 1 ? 'ok' : 'noop', percent, previous: old === '' ? null : old, state: state === '' ? 'active' : state }
  }

  /**
   * Turns the write dial (`route` undefined) or a route's own dial; `null` deletes it, so it follows `percent`
   * again. A raise is refused while the L2 guard freezes the ramp; the same value is a no-op.
   */
  async setDial (route: string | undefined, percent: number | null, actor: Actor, reason = ''): Promise<CommandResult<{ dial: string, percent: number | null, previous: string | null }>> {
    const dial = route === undefined ? 'write_percent' : `route:${route}:percent`
    if (percent !== null && parsePercent(String(percent)) === undefined) return refused('DBSHIFT_ERR_INVALID_VALUE', `${dial} must be ${PERCENT_RULE}`)
    if (route !== undefined && !this.#o.store.routes.includes(route)) {
      const names = this.#o.store.routes
      return refused('DBSHIFT_ERR_INVALID_VALUE', `no route is named "${route}" in the config's routes (${names.length === 0 ? 'it has none' : `configured: ${names.join(', ')}`})`)
    }
    const blocked = await this.#preconditions(actor, 'moving traffic toward migrated needs Redis; try again when it is back')
    if (blocked !== undefined) return blocked
    if (percent !== null) {
      const shared = await this.#o.store.read()
      const unhealthy = await this.#unhealthyRaise(percent, (route === undefined ? shared.writePercent : shared.routePercent.get(route)) ?? shared.percent)
      if (unhealthy !== undefined) {
        this.#o.log.warn({ dial, percent, by: actor.by, why: unhealthy }, `refused a raise of ${dial}: the migrated pool has no healthy member`)
        return refused('DBSHIFT_ERR_POOL_UNHEALTHY', unhealthy)
      }
    }
    const k = this.keys
    const key = route === undefined ? k.writePercent : k.routePercent(route)
    const action = route === undefined ? 'set_write_percent' : 'set_route_percent'
    const notReady = percent === null ? '' : await this.#wayBackProblem()
    const [done, old, frozenBecause] = await this.#scripts.change('dbshiftSetDial', this.#header(actor, reason), [key, k.freeze, k.percent, k.wayBack],
      [percent === null ? '' : String(percent), action, this.#o.initialPercent, notReady, ...(route === undefined ? [] : ['route', route])]) as [number, string, string]
    if (done === 3) {
      this.#o.log.warn({ dial, percent, by: actor.by, why: frozenBecause }, `refused a raise of ${dial}: the way back is not ready`)
      return refused('DBSHIFT_ERR_WAY_BACK_NOT_READY', `${frozenBecause}; a raise needs the reverse lag known and at most ${this.#rules.maxLagSeconds} s (lowering still works)`)
    }
    if (done === 0) {
      this.#o.log.warn({ dial, percent, by: actor.by, frozenBecause }, `refused a raise of ${dial}: the ramp is frozen`)
      return refused('DBSHIFT_ERR_RAMP_FROZEN', `${frozenBecause || 'the L2 guard froze it'}; lowering ${dial} still works`)
    }
    if (done === 1) await this.#reread()
    return { status: done === 1 ? 'ok' : 'noop', dial, percent, previous: old === '' ? null : old }
  }

  /**
   * Sends everyone to legacy, fleet-wide. On an instance the move applies here at once (safety moves never wait)
   * and is written to Redis as soon as it can be; a rollback already in force is a no-op. In reverse_sync (and
   * on an L3 trip in every mode) it fences the moving cohort's writes in the same step. With no way back
   * (`none`) it is refused unless `force`.
   */
  async rollback (request: { level?: string, reason?: string, force?: boolean }, actor: Actor): Promise<CommandResult<{ trip: Trip, outcome: TripOutcome, fence?: Fence }>> {
    const at = this.#now()
    const level = request.level ?? 'manual'
    const force = request.force === true
    const trip: Trip = { level, reason: request.reason === undefined || request.reason === '' ? DEFAULT_REASONS[actor.source] : request.reason, at: new Date(at).toISOString(), by: actor.by }
    const header = this.#header(actor, trip.reason, at)
    const k = this.keys
    const id = `${at.toString(36)}-${randomBytes(4).toString('hex')}`
    const deadline = at + this.#rules.fenceTimeoutMs
    let written: { code: number, fence: string } | undefined
    let local: Fence | undefined
    const write = async (): Promise<boolean> => {
      const [code, , fence] = await this.#scripts.change('dbshiftRollback', header, [k.state, k.trip, k.wayBack, k.fence, k.percent, k.writePercent],
        [level, trip.at, force ? '1' : '', id, new Date(deadline).toISOString(), local === undefined ? '' : String(local.percent), this.#o.initialPercent, local === undefined ? '' : '1']) as [number, string, string]
      written = { code, fence }
      return code === 1
    }
    const noWayBack = (): Refused => refused('DBSHIFT_ERR_NO_WAY_BACK', `the way back is "none": legacy would not see migrated's writes, so a rollback loses them; ${actor.source === 'cli' ? 'add --force' : 'send "force": true'} to roll back anyway`)
    const sync = this.#o.sync
    let outcome: TripOutcome
    let fence: Fence | undefined
    if (sync === undefined || (sync.current.wayBack === 'none' && !force)) {
      const blocked = await this.#preconditions(actor, sync === undefined ? 'a rollback with the dbshift command is written to Redis' : 'with no way back, a rollback is decided in Redis')
      if (blocked !== undefined) return blocked.code === 'DBSHIFT_ERR_REDIS_UNAVAILABLE' && sync !== undefined ? noWayBack() : blocked
      outcome = await write() ? 'tripped' : 'joined'
      await this.#reread()
    } else {
      const current = sync.current
      // The fence engages here at once too, on the cohort that wrote to migrated before the rollback.
      local = !current.rolledBack && (level === 'L3' || current.wayBack === 'reverse_sync')
        ? { id, level, reason: trip.reason, at, deadline: level === 'L3' ? undefined : deadline, percent: Math.min(current.writePercent ?? current.percent, current.percent), held: false }
        : undefined
      let persisted = await sync.rollbackLocally(trip, write, local)
      // With Redis connected, a write that failed (a command timeout under load) is tried again before the trip is
      // called pending: whether it was this rollback or another's must come from Redis, not a guess.
      for (let attempt = 0; !persisted && isReady(this.#o.redis) && attempt < ROLLBACK_ATTEMPTS; attempt++) {
        await sync.refresh().catch((err: unknown) => { this.#o.log.warn({ err }, 'writing the rollback to Redis failed; trying again') })
        persisted = !sync.rollbackPending
      }
      const recorded = sync.current.trip
      outcome = !persisted ? 'pending' : recorded?.by === trip.by && recorded.at === trip.at ? 'tripped' : 'joined'
      fence = outcome === 'pending' ? local : undefined
    }
    if (written?.code === -1) return noWayBack()
    if (written !== undefined && written.fence !== '') fence = sync?.current.fence ?? { id, level, reason: trip.reason, at, deadline: level === 'L3' ? undefined : deadline, percent: 0, held: false }
    if (outcome === 'joined') return { status: 'noop', trip, outcome }
    this.#o.metrics?.guardTrips.labels(trip.level).inc()
    this.#o.notifier?.send({ action: actor.source === 'guard' ? 'trip' : 'rollback', actor, reason: trip.reason, level: trip.level, at, pending: outcome === 'pending' })
    if (fence !== undefined) this.#o.notifier?.send({ action: 'fence', actor, reason: trip.reason, level, at, fence: fence.id, pending: outcome === 'pending' })
    return { status: 'ok', trip, outcome, fence }
  }

  /**
   * With no way back, a guard that would roll back freezes the ramp instead and alerts; an L3 trip also fences
   * the cohort's writes, since inconsistent data must not be written further.
   */
  async freezeInstead (level: 'L1' | 'L3', reason: string, actor: Actor): Promise<CommandResult<{ fence?: string }>> {
    const at = this.#now()
    const header = this.#header(actor, `${level}: ${reason} (no way back: the ramp is frozen instead of rolled back)`, at)
    const frozen = await this.#scripts.change('dbshiftFreeze', header, [this.keys.freeze]) === 1
    let fence: string | undefined
    if (level === 'L3') {
      const id = `${at.toString(36)}-${randomBytes(4).toString('hex')}`
      if (await this.#scripts.change('dbshiftFence', header, [this.keys.fence, this.keys.percent, this.keys.writePercent], [id, level, new Date(at).toISOString(), this.#o.initialPercent]) === 1) fence = id
    }
    if (!frozen && fence === undefined) return { status: 'noop' }
    this.#o.notifier?.send({ action: 'rollback_refused', actor, reason: header.reason, level, at, fence })
    await this.#reread()
    return { status: 'ok', fence }
  }

  /** Declares how the data gets back to legacy: dual_write, reverse_sync or none. */
  async setWayBack (mode: unknown, actor: Actor, reason = ''): Promise<CommandResult<{ mode: WayBackMode, previous: WayBackMode }>> {
    const parsed = typeof mode === 'string' ? parseWayBack(mode) : undefined
    if (parsed === undefined) return refused('DBSHIFT_ERR_INVALID_VALUE', `the way back must be ${WAY_BACK_RULE} (got ${JSON.stringify(mode) ?? 'nothing'})`)
    const blocked = await this.#preconditions(actor, 'declaring the way back needs Redis')
    if (blocked !== undefined) return blocked
    const header = this.#header(actor, reason)
    const [done, old] = await this.#scripts.change('dbshiftWayBack', header, [this.keys.wayBack], [parsed]) as [number, string]
    const previous = parseWayBack(old) ?? 'dual_write'
    if (done === 1) {
      await this.#reread()
      this.#o.notifier?.send({ action: 'way_back', actor, reason: `${previous} → ${parsed}${reason === '' ? '' : `: ${reason}`}`, at: header.at })
    }
    return { status: done === 1 ? 'ok' : 'noop', mode: parsed, previous }
  }

  /**
   * Lifts the fence `id` (undefined: whichever is in force). A release on timeout is the unsafe one: counted in
   * dbshift_rollback_unsafe_total and alerted.
   */
  async releaseFence (id: string | undefined, how: FenceRelease, actor: Actor, reason = ''): Promise<CommandResult<{ fence: string }>> {
    if (!isReady(this.#o.redis)) return refused('DBSHIFT_ERR_REDIS_UNAVAILABLE', 'lifting the fence needs Redis; try again when it is back')
    const header = this.#header(actor, reason === '' ? FENCE_RELEASES[how] : reason)
    const [done, released] = await this.#scripts.change('dbshiftFenceRelease', header, [this.keys.fence], [id ?? '', how]) as [number, string]
    if (done !== 1) return { status: 'noop', fence: id ?? '' }
    if (how === 'timeout') this.#o.metrics?.rollbackUnsafe.inc()
    this.#o.log[how === 'timeout' ? 'error' : 'warn']({ fence: released, how, by: actor.by }, `fence lifted: ${header.reason}`)
    this.#o.notifier?.send({ action: how === 'timeout' ? 'fence_timeout' : 'fence_release', actor, reason: header.reason, at: header.at, fence: released })
    await this.#reread()
    return { status: 'ok', fence: released }
  }

  /** A timed-out fence that stays (onTimeout: hold): recorded and alerted once for the fleet. */
  async holdFence (id: string, actor: Actor): Promise<boolean> {
    const header = this.#header(actor, 'the fence timed out and is held (onTimeout: hold) until an operator releases it')
    const done = await this.#scripts.change('dbshiftFenceHold', header, [this.keys.fence], [id]) === 1
    if (done) this.#o.notifier?.send({ action: 'fence_hold', actor, reason: header.reason, at: header.at, fence: id })
    return done
  }

  /** The verdict on the way back now: on an instance from what it applies, from the command from Redis. */
  async wayBackVerdict (): Promise<WayBackVerdict> {
    const mode = this.#o.sync?.current.wayBack ?? (await this.#o.store.read()).wayBack
    return judgeWayBack(mode, await this.#lagReading(), this.#now(), this.#rules)
  }

  /** Why a raise in reverse_sync would be refused now ('' when it would not); a schedule's step waits on it. */
  async raiseRefusal (): Promise<string> {
    const mode = this.#o.sync?.current.wayBack ?? (await this.#o.store.read()).wayBack
    return mode === 'reverse_sync' ? await this.#wayBackProblem() : ''
  }

  /** Re-arms the rollout after a rollback, fleet-wide: the re-arm time is kept in Redis for instances that start later. */
  async resume (actor: Actor, reason = ''): Promise<CommandResult<{ percent: number }>> {
    const blocked = await this.#preconditions(actor, 'resuming moves traffic toward migrated and needs Redis')
    if (blocked !== undefined) return blocked
    const k = this.keys
    const header = this.#header(actor, reason)
    const done = await this.#scripts.change('dbshiftResume', header, [k.state, k.trip, k.armed, k.fence]) === 1
    if (done) {
      await this.#reread()
      this.#o.notifier?.send({ action: 'resume', actor, reason, at: header.at })
    }
    // The percentage it follows again, for the caller's message; not worth failing the resume over.
    const shared = await this.#o.store.read().catch((err: unknown) => { this.#o.log.debug({ err }, 'reading the percentage after a resume failed') })
    return { status: done ? 'ok' : 'noop', percent: shared?.percent ?? this.#o.initialPercent }
  }

  /** Freezes the ramp (L2): a raise of the percentage is refused while the key holds `reason`. */
  async freeze (reason: string, actor: Actor): Promise<CommandResult> {
    const header = this.#header(actor, reason)
    const done = await this.#scripts.change('dbshiftFreeze', header, [this.keys.freeze]) === 1
    if (done) this.#o.notifier?.send({ action: 'freeze', actor, reason, at: header.at })
    return { status: done ? 'ok' : 'noop' }
  }

  /** Lifts the L2 freeze. */
  async unfreeze (actor: Actor, reason = ''): Promise<CommandResult> {
    const header = this.#header(actor, reason)
    const done = await this.#scripts.change('dbshiftUnfreeze', header, [this.keys.freeze]) === 1
    if (done) this.#o.notifier?.send({ action: 'unfreeze', actor, reason, at: header.at })
    return { status: done ? 'ok' : 'noop' }
  }

  /** Adds or removes a user key (a UTF-8 string of 1 to 256 bytes) in the allow or deny set. */
  async changeMember (set: 'allow' | 'deny', op: 'add' | 'rm', user: unknown, actor: Actor): Promise<CommandResult<{ set: 'allow' | 'deny', op: 'add' | 'rm', user: string }>> {
    if (typeof user !== 'string' || user === '' || Buffer.byteLength(user) > MAX_KEY_BYTES) {
      return refused('DBSHIFT_ERR_INVALID_VALUE', `a user key must be a string of 1 to ${MAX_KEY_BYTES} bytes${typeof user === 'string' ? '' : ` (got ${user === null ? 'null' : typeof user})`}`)
    }
    const blocked = await this.#preconditions(actor, `changing the ${set}-set needs Redis`)
    if (blocked !== undefined) return blocked
    const action = `${set}_${op}` as const
    let done: boolean
    try {
      done = await this.#scripts.change('dbshiftMember', this.#header(actor, ''), [this.keys[set]], [op, user, action]) === 1
    } catch (err) {
      // A key of the wrong Redis type (a string where the set belongs) is a bad value in Redis, not a failure.
      if (!(err instanceof Error) || !err.message.includes('WRONGTYPE')) throw err
      return refused('DBSHIFT_ERR_INVALID_VALUE', wrongTypeMessage(this.keys[set]))
    }
    if (done) await this.#reread()
    return { status: done ? 'ok' : 'noop', set, op, user }
  }

  /** Starts a ramp schedule; a runner takes its first step. */
  async startRamp (steps: RampStep[], actor: Actor): Promise<CommandResult<{ schedule: Schedule }>> {
    const blocked = await this.#preconditions(actor, 'starting a ramp schedule needs Redis')
    if (blocked !== undefined) return blocked
    const shared = await this.#o.store.read()
    if (shared.state === 'rolled_back') return refused('DBSHIFT_ERR_CONFLICT', `the rollout is rolled back: ${hint(actor, 'resume')} before starting a ramp`)
    if (!steps.some((step) => stepAhead(step, shared.percent, shared.writePercent, false))) {
      return refused('DBSHIFT_ERR_CONFLICT', `the dial is already at ${shared.percent}%${shared.writePercent === undefined ? '' : ` (writes ${shared.writePercent}%)`}: no step raises it without lowering the other dial`)
    }
    const { schedule: current, raw } = await this.#o.schedules.read()
    const now = this.#now()
    if (isActive(current)) return refused('DBSHIFT_ERR_CONFLICT', `a ramp schedule is already active (${describeProgress(current, now)}); ${hint(actor, 'abort')} first`)
    const schedule: Schedule = { steps, step: -1, status: 'running', percent: null, stepAt: null, bakeFrom: null, note: '', by: actor.by, createdAt: now, updatedAt: now }
    const result = await this.writeSchedule(raw, schedule, actor, { action: 'schedule_start', new: describePlan(steps) })
    if (result !== 'ok') return refused('DBSHIFT_ERR_CONFLICT', 'the ramp schedule changed under this command; try again')
    return { status: 'ok', schedule }
  }

  /** Pauses, continues or aborts the active schedule. Continuing accepts the dial as it is. */
  async controlRamp (verb: RampVerb, actor: Actor, reason = ''): Promise<CommandResult<{ schedule: Schedule }>> {
    const blocked = await this.#preconditions(actor, `${verb === 'continue' ? 'continuing' : verb === 'pause' ? 'pausing' : 'aborting'} the ramp schedule needs Redis`)
    if (blocked !== undefined) return blocked
    let dial: number | undefined
    let writeDial: number | undefined
    if (verb === 'continue') {
      const shared = await this.#o.store.read()
      if (shared.state === 'rolled_back') return refused('DBSHIFT_ERR_CONFLICT', `the rollout is rolled back: ${hint(actor, 'resume')} first`)
      dial = shared.percent
      writeDial = shared.writePercent
    }
    for (let attempt = 0; attempt < 5; attempt++) {
      const { schedule, raw } = await this.#o.schedules.read()
      if (!isActive(schedule)) return refused('DBSHIFT_ERR_CONFLICT', 'no ramp schedule is active')
      const next: Schedule = { ...schedule }
      if (verb === 'pause') {
        if (schedule.status === 'paused') return { status: 'noop', schedule }
        Object.assign(next, { status: 'paused', bakeFrom: null, note: `paused by ${actor.by}${reason === '' ? '' : `: ${reason}`}` })
      } else if (verb === 'continue') {
        if (schedule.status === 'running') return { status: 'noop', schedule }
        // The operator accepts the dial as it is: later steps at or below it are skipped, never taken downward.
        Object.assign(next, {
          status: 'running',
          bakeFrom: null,
          note: '',
          percent: schedule.step < 0 ? null : dial ?? schedule.percent,
          writePercent: schedule.step < 0 || schedule.writePercent === undefined || schedule.writePercent === null ? schedule.writePercent : writeDial ?? null
        })
      } else {
        Object.assign(next, { status: 'aborted', bakeFrom: null, note: `aborted by ${actor.by}${reason === '' ? '' : `: ${reason}`}` })
      }
      const result = await this.writeSchedule(raw, next, actor, { action: `schedule_${verb}`, old: schedule.status, new: next.status, reason })
      if (result === 'ok') return { status: 'ok', schedule: next }
    }
    return refused('DBSHIFT_ERR_CONFLICT', 'the schedule kept changing under this command; try again')
  }

  /**
   * A guard in dry-run mode would have tripped: the bake of the step in force was not healthy, so it starts again
   * now. Only the first alarm of a bake is audited, so that an alarm repeated every second does not flood the trail.
   */
  async restartBake (why: string, actor: Actor): Promise<boolean> {
    const { schedule, raw } = await this.#o.schedules.read()
    if (schedule?.status !== 'running' || schedule.step < 0 || schedule.bakeFrom === null) return false
    const note = `bake restarted: ${why}`
    const first = schedule.note !== note
    const result = await this.writeSchedule(raw, { ...schedule, bakeFrom: this.#now(), note }, actor, {
      action: first ? 'schedule_hold' : undefined, old: String(schedule.percent ?? ''), new: String(schedule.percent ?? ''), reason: note
    })
    return result === 'ok'
  }

  /**
   * Writes `next` (undefined deletes it) if the schedule still is `raw`, optionally with a step's percentage and
   * write dial: the preconditions of a raise by hand hold (the raise gate, no rollback, no freeze).
   */
  async writeSchedule (raw: string, next: Schedule | undefined, actor: Actor, change: ScheduleChange): Promise<'ok' | WriteRefusal> {
    if (change.percent !== undefined && await this.#unhealthyRaise(change.percent) !== undefined) return 'unhealthy'
    const k = this.keys
    const header = this.#header(actor, change.reason ?? '')
    if (next !== undefined) next.updatedAt = header.at
    return await this.#scripts.change('dbshiftSchedule', header, [k.schedule, k.percent, k.state, k.freeze, k.writePercent], [
      raw, next === undefined ? '' : JSON.stringify(next), change.percent === undefined ? '' : String(change.percent),
      change.action ?? '', change.old ?? '', change.new ?? '', change.writePercent === undefined ? '' : String(change.writePercent)
    ]) as 'ok' | WriteRefusal
  }

  /** An audit entry that goes with no change of state (a runner taking the schedule over). */
  async record (action: AuditAction, actor: Actor, fields: { old?: string, new?: string, reason?: string }): Promise<void> {
    await this.#scripts.record(action, this.#header(actor, fields.reason ?? ''), { old: fields.old, new: fields.new })
  }

  /**
   * A change of `percent`, `state`, `write_percent` or a route dial made outside dbshift (a plain `redis-cli SET`),
   * noticed by `noticedBy`. The instances that notice it race for `claim`, so the fleet records it once; a
   * hand-made resume re-arms the guards fleet-wide like any other. False when another instance recorded it.
   */
  async recordHandChange (change: { key: HandChangedKey, old: string | null, new: string | null, claim: string, noticedBy: string }): Promise<boolean> {
    const k = this.keys
    const redisKey = change.key === 'percent' || change.key === 'state'
      ? k[change.key]
      : change.key === 'write_percent' ? k.writePercent : k.routePercent(change.key.slice('route:'.length, -':percent'.length))
    const reason = `${redisKey} changed outside dbshift${change.new === null ? ' (deleted)' : ''}; noticed by ${change.noticedBy}`
    const rolledBackBefore = change.old === 'rolled_back'
    const rolledBackNow = change.new === 'rolled_back'
    const resumed = change.key === 'state' && rolledBackBefore && (change.new === null || change.new === 'active')
    const header = this.#header(BY_HAND, reason)
    // A raise by hand cannot be refused; while the way back is not ready it is flagged, in the audit and in status.
    const raised = change.key === 'percent' && Number(change.new ?? this.#o.initialPercent) > Number(change.old ?? this.#o.initialPercent)
    const problem = raised ? await this.raiseRefusal() : ''
    const warning = problem === '' ? '' : `raised by hand while the way back is not ready (${problem})`
    const done = await this.#scripts.change('dbshiftHandChange', header, [this.keys.handChange(change.claim), this.keys.armed],
      [change.noticedBy, HAND_CLAIM_MS, change.key, change.old ?? '', change.new ?? '', resumed ? '1' : '0', warning]) === 1
    if (warning !== '') this.handRaise = { at: header.at, value: change.new ?? '', warning }
    if (!done) return false
    if (warning !== '') this.#o.log.error({ key: redisKey, old: change.old, new: change.new, why: problem }, `the percentage was ${warning}`)
    this.#o.log.info({ key: redisKey, old: change.old, new: change.new }, 'a change made by hand in Redis was noticed; recorded in the audit stream')
    if (resumed) {
      await this.#reread()
      this.#o.notifier?.send({ action: 'resume', actor: BY_HAND, reason, at: header.at })
    } else if (change.key === 'state' && rolledBackNow && !rolledBackBefore) {
      this.#o.notifier?.send({ action: 'rollback', actor: BY_HAND, reason, level: 'manual', at: header.at })
    }
    return true
  }

  /** Writes one instance's heartbeat into the fleet view. */
  async beat (id: string, beat: string, now: number, ttlMs: number, prune: boolean): Promise<void> {
    await this.#scripts.run('dbshiftBeat', [this.keys.instances], [id, beat, now, ttlMs, prune ? '1' : '0'])
  }

  /** Takes an instance out of the fleet view (a graceful stop). */
  async leave (id: string): Promise<void> {
    await this.#o.redis.hdel(this.keys.instances, id)
  }

  /** The lease that lets one instance at a time advance the ramp schedule. */
  scheduleLease (holder: string, ttlMs: number): Lease {
    return new Lease(this.#scripts, this.keys.scheduleLease, holder, ttlMs)
  }

  /** The notifications under way, for a command that exits after its change. */
  async flush (): Promise<void> {
    await this.#o.notifier?.flush()
  }

  get #rules (): WayBackRules {
    return this.#o.wayBack ?? DEFAULT_WAY_BACK
  }

  /** The reverse lag: the instance's own readings, or for the command one read of the key, seen now. */
  async #lagReading (): Promise<LagReading | undefined> {
    if (this.#o.reverseLag !== undefined) return this.#o.reverseLag.reading
    const { text } = await this.#o.store.readReverseLag()
    const lag = text === null ? undefined : parseLag(text)
    return lag === undefined ? undefined : { lag, seenAt: this.#now() }
  }

  /** Why the way back would refuse a raise if it were reverse_sync ('' = it would not); the script checks the mode. */
  async #wayBackProblem (): Promise<string> {
    const verdict = judgeWayBack('reverse_sync', await this.#lagReading(), this.#now(), this.#rules)
    return verdict.ready ? '' : verdict.why
  }

  #header (actor: Actor, reason: string, at = this.#now()): AuditHeader {
    return { actor, reason, at }
  }

  /** What every change that needs Redis checks first. */
  async #preconditions (actor: Actor, needsRedis: string): Promise<Refused | undefined> {
    if (!isReady(this.#o.redis)) return refused('DBSHIFT_ERR_REDIS_UNAVAILABLE', needsRedis)
    const followers = this.#o.requireFollowers
    if (followers === undefined || actor.source !== 'cli') return undefined
    const live = await followers()
    if ((live.get(this.keys.name) ?? 0) > 0 || live.size === 0) return undefined
    const names = [...live].sort(([a], [b]) => a.localeCompare(b)).map(([name, count]) => `${name} (${count})`).join(', ')
    return refused('DBSHIFT_ERR_NO_INSTANCES', `no live dbshift instance follows rollout "${this.keys.name}"; rollouts with live instances: ${names}. ` +
      `Check --rollout (or DBSHIFT_ROLLOUT, rollout.name), or add --force to change "${this.keys.name}" anyway`)
  }

  /** Why a raise to `percent` is refused by the raise gate, or undefined (not a raise, or the pool is healthy). */
  async #unhealthyRaise (percent: number, current?: number): Promise<string | undefined> {
    const why = await this.#o.raiseGate?.()
    if (why === undefined || percent <= (current ?? (await this.#o.store.read()).percent)) return undefined
    return why
  }

  /** On an instance, reads the change back at once rather than at the next poll. */
  async #reread (): Promise<void> {
    await this.#o.sync?.refresh().catch((err: unknown) => { this.#o.log.debug({ err }, 'reading a change back failed; the poll will catch up') })
  }
}

const FENCE_RELEASES: Record<FenceRelease, string> = {
  caught_up: 'the reverse sync caught up past the fence',
  restored: 'the data rollback restored the data (signal:data_restored holds the fence id)',
  timeout: 'the fence timed out before the reverse sync caught up (onTimeout: release)',
  operator: 'released by an operator'
}

/** How an operator does the next thing, in the words of where the command came from. */
function hint (actor: Actor, verb: 'resume' | 'abort'): string {
  if (actor.source !== 'cli') return `${verb} it`
  return verb === 'resume' ? '"dbshift resume" it' : '"dbshift ramp abort" it'
}
