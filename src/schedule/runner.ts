import type { Logger } from 'pino'
import { every, type Periodic } from '../background.ts'
import type { Actor } from '../control/audit.ts'
import type { RolloutControl, ScheduleChange } from '../control/commands.ts'
import type { Lease } from '../control/lease.ts'
import { isReady, type RedisClient } from '../rollout/redis.ts'
import type { RolloutStore } from '../rollout/store.ts'
import { isActive, stepAhead, type RampStep, type Schedule } from '../rollout/schedule.ts'
import type { ScheduleStore } from '../rollout/schedule-store.ts'

/** Ticks between checks while no schedule runs (a schedule started meanwhile waits at most this many ticks). */
const IDLE_TICKS = 5

export interface ScheduleRunnerOptions {
  instanceId: string
  store: RolloutStore
  schedules: ScheduleStore
  control: RolloutControl
  redis: RedisClient
  /** How often the schedule is checked. */
  tickMs: number
  /** How long the lease lasts without renewal: the longest a dead runner holds the schedule up. */
  leaseMs: number
  now: () => number
  log: Logger
  /** Counts failed checks. */
  failures?: { inc: () => void }
}

/**
 * Advances the ramp schedule. Every instance runs one, but only the holder of the lease in Redis acts, so
 * exactly one instance advances it; when that instance dies, its lease expires and another one takes over.
 * A step is taken only after its bake has run with no trip and no freeze; a trip aborts the schedule.
 */
export class ScheduleRunner {
  readonly #o: ScheduleRunnerOptions
  readonly #lease: Lease
  readonly #actor: Actor
  #holding = false
  #running = false
  #periodic: Periodic | undefined
  #ticking: Promise<void> | undefined
  #again = false
  #closed = false
  /** The deferral last logged (action and result): a step that waits is logged once per reason, not per check. */
  #deferred: string | undefined

  constructor (options: ScheduleRunnerOptions) {
    this.#o = options
    this.#lease = options.control.scheduleLease(options.instanceId, options.leaseMs)
    this.#actor = { by: options.instanceId, source: 'schedule' }
  }

  /** True while this instance holds the lease (advances the schedule). */
  get holding (): boolean {
    return this.#holding
  }

  start (): void {
    // With no schedule running, look five times less often: that read is most of an idle instance's Redis cost.
    this.#periodic = every('the ramp schedule check', async () => {
      this.checkNow()
      await this.#ticking
    }, { intervalMs: () => this.#running ? this.#o.tickMs : this.#o.tickMs * IDLE_TICKS, immediately: true, log: this.#o.log })
  }

  /** Checks now (after a change of the rollout: a trip must abort the schedule at once). */
  checkNow (): void {
    if (this.#closed) return
    if (this.#ticking !== undefined) {
      this.#again = true
      return
    }
    this.#ticking = this.tick()
      .catch((err: unknown) => {
        this.#o.failures?.inc()
        this.#o.log.warn({ err }, 'checking the ramp schedule failed; retrying')
      })
      .finally(() => {
        this.#ticking = undefined
        if (this.#again) {
          this.#again = false
          this.checkNow()
        }
      })
  }

  async close (): Promise<void> {
    this.#closed = true
    await this.#periodic?.stop()
    await this.#ticking
    if (this.#holding && isReady(this.#o.redis)) {
      // Not fatal: the lease expires by itself within leaseMs.
      await this.#lease.release().catch((err: unknown) => { this.#o.log.debug({ err }, 'releasing the ramp schedule lease failed; it expires by itself') })
    }
    this.#holding = false
  }

  /** One check of the schedule: the whole decision, from what Redis holds now. */
  async tick (): Promise<void> {
    const { redis, schedules, store, control, log } = this.#o
    if (!isReady(redis)) return
    const { schedule, raw } = await schedules.read()
    this.#running = isActive(schedule)
    if (!isActive(schedule)) {
      if (this.#holding) await this.#lease.release()
      this.#holding = false
      return
    }
    if (!await this.#lease.acquire()) {
      this.#holding = false
      return
    }
    if (!this.#holding) {
      this.#holding = true
      log.info('this instance now advances the ramp schedule')
      await control.record('schedule_runner', this.#actor, { new: this.#o.instanceId, reason: 'took the ramp schedule lease' })
    }
    const shared = await store.read()
    const frozen = shared.freeze
    const now = this.#o.now()
    const dial = shared.percent
    const writeDial = shared.writePercent
    const write: Write = async (next, action, reason, dials) => {
      const result = await control.writeSchedule(raw, next, this.#actor, { action, old: String(schedule.percent ?? dial), new: String(next.percent ?? dial), reason, ...dials })
      if (result !== 'ok') {
        if (this.#deferred !== `${action} ${result}`) log.info({ result, action }, 'ramp schedule step deferred')
        this.#deferred = `${action} ${result}`
      } else {
        this.#deferred = undefined
        log.info({ action, step: next.step + 1, percent: next.percent, writePercent: next.writePercent, status: next.status, reason }, 'ramp schedule changed')
      }
    }

    if (shared.state === 'rolled_back') {
      const trip = shared.trip
      const note = `rolled back${trip === undefined ? '' : ` (${trip.level}: ${trip.reason})`}`
      return await write({ ...schedule, status: 'aborted', bakeFrom: null, note }, 'schedule_abort', note)
    }
    if (schedule.status === 'paused') return
    if (schedule.step >= 0 && schedule.percent !== null && dial !== schedule.percent) {
      const note = `the dial was moved to ${dial}% outside the schedule (it had set ${schedule.percent}%): 'dbshift ramp continue' goes on from ${dial}%, 'dbshift ramp abort' stops`
      return await write({ ...schedule, status: 'paused', bakeFrom: null, note }, 'schedule_pause', note)
    }
    const setWrites = schedule.writePercent ?? null
    if (schedule.step >= 0 && setWrites !== null && writeDial !== setWrites) {
      const note = `the write dial was moved to ${writeDial === undefined ? 'follow percent' : `${writeDial}%`} outside the schedule (it had set ${setWrites}%): 'dbshift ramp continue' goes on from there, 'dbshift ramp abort' stops`
      return await write({ ...schedule, status: 'paused', bakeFrom: null, note }, 'schedule_pause', note)
    }
    if (frozen !== null) {
      const note = `frozen by the L2 guard${frozen === '' || frozen === '1' ? '' : `: ${frozen}`}`
      if (schedule.bakeFrom === null && schedule.note === note) return
      return await write({ ...schedule, bakeFrom: null, note }, 'schedule_hold', `${note}; the bake restarts when the freeze ends`)
    }
    const notReady = await control.raiseRefusal()
    if (notReady !== '') {
      // A step would raise the dial: in reverse_sync it waits, and its bake starts again once the lag is low.
      const note = 'waiting for the way back: the reverse lag is unknown or above guards.wayBack.maxLagSeconds'
      if (schedule.bakeFrom === null && schedule.note === note) return
      return await write({ ...schedule, bakeFrom: null, note }, 'schedule_hold', `${note} (${notReady}); the bake restarts when it is low`)
    }
    if (schedule.step < 0) return await this.#take(schedule, dial, writeDial, now, write)
    const step = schedule.steps[schedule.step]
    if (step === undefined) return
    if (schedule.bakeFrom === null) {
      return await write({ ...schedule, bakeFrom: now, note: '' }, 'schedule_bake', `the bake of step ${schedule.step + 1} (${step.percent}%) starts`)
    }
    if (now - schedule.bakeFrom >= step.bakeMs) await this.#take(schedule, dial, writeDial, now, write)
  }

  /** Takes the next step that raises a dial without lowering the other (a schedule never moves users back), or ends the schedule. */
  async #take (schedule: Schedule, dial: number, writeDial: number | undefined, now: number, write: Write): Promise<void> {
    const first = schedule.step < 0
    const index = schedule.steps.findIndex((step, i) => i > schedule.step && stepAhead(step, dial, writeDial, first))
    const total = schedule.steps.length
    if (index === -1) {
      return await write({ ...schedule, status: 'done', bakeFrom: null, note: `the dial is at ${dial}%${writeDial === undefined ? '' : ` (writes ${writeDial}%)`}, at or above every step` }, 'schedule_done', 'no step left above the dial')
    }
    const step = schedule.steps[index] as RampStep
    const last = index === total - 1
    const next: Schedule = {
      ...schedule, step: index, percent: step.percent, writePercent: step.writePercent ?? schedule.writePercent ?? null, stepAt: now, bakeFrom: now, note: '', status: last ? 'done' : 'running'
    }
    await write(next, 'schedule_step', `ramp step ${index + 1} of ${total}${last ? ' (the last)' : ''}`, { percent: step.percent, writePercent: step.writePercent })
  }
}

type Write = (next: Schedule, action: ScheduleChange['action'], reason: string, dials?: { percent: number, writePercent: number | undefined }) => Promise<void>

/** How often the schedule is checked and how long the lease lasts, from the poll interval (500 ms → 1 s and 5 s). */
export function runnerTimings (pollIntervalMs: number): { tickMs: number, leaseMs: number } {
  const tickMs = Math.min(pollIntervalMs * 2, 1_000)
  return { tickMs, leaseMs: Math.max(tickMs * 5, 1_000) }
}
