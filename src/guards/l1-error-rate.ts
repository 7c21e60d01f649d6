import { VERSIONS, type Version } from '../routing/decide.ts'
import { isReady } from '../rollout/redis.ts'
import type { RolloutSnapshot } from '../rollout/snapshot.ts'
import { judge } from './error-rate.ts'
import { FleetCounts, type FleetTotals } from './fleet-counts.ts'
import type { GuardContext, GuardEmitter, L1Evaluation } from './events.ts'
import { dryRunTrip, tripRollout } from './trip.ts'

export type { L1Evaluation } from './events.ts'

/**
 * L1: rolls back when the migrated version's error rate is too high, judged on the whole fleet's counts. Every
 * `evaluateIntervalMs` it hands its new counts to the fleet and reads the fleet's totals back (one Redis call,
 * and none at all while it has no migrated traffic). While Redis is away it judges on its own counts, so a
 * hard failure is still caught. After a trip it stays quiet until an operator resumes the rollout, and then
 * only counts what happened after the resume.
 */
export class ErrorRateGuard {
  readonly #ctx: GuardContext
  readonly #events: GuardEmitter
  readonly #rules: GuardContext['config']['guards']['l1']
  readonly #fleet: FleetCounts
  readonly #versions: readonly Version[]
  #armedAt = 0
  #dryRunTripped = false
  #last: L1Evaluation | undefined
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #closed = false

  constructor (ctx: GuardContext, events: GuardEmitter) {
    this.#ctx = ctx
    this.#events = events
    this.#rules = ctx.config.guards.l1
    this.#versions = this.#rules.compareWithLegacy ? VERSIONS : ['migrated']
    this.#fleet = new FleetCounts(ctx.redis, ctx.store.keys, {
      fastMs: this.#rules.fastWindowMs,
      longMs: this.#rules.windowMs,
      localSlotMs: ctx.traffic.slotMs,
      versions: this.#versions
    })
    ctx.sync.on('change', this.#onChange)
  }

  start (): void {
    this.#schedule()
  }

  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    this.#ctx.sync.off('change', this.#onChange)
    await this.#running
  }

  status (): Record<string, unknown> {
    const last = this.#last
    return {
      armedSince: this.#armedAt === 0 ? null : new Date(this.#armedAt).toISOString(),
      fleetSlotMs: this.#fleet.slotWidths,
      pendingSlots: this.#fleet.pending,
      last: last === undefined ? null : { at: new Date(last.at).toISOString(), source: last.source, totals: last.totals, wouldTrip: last.verdict.trip, reason: last.verdict.reason }
    }
  }

  /** Runs one evaluation now (the timer does this every evaluateIntervalMs). */
  async evaluate (): Promise<L1Evaluation | undefined> {
    const ctx = this.#ctx
    const now = ctx.now()
    // A resume anywhere in the fleet re-arms this guard too, also when this instance started after it.
    this.#armedAt = Math.max(this.#armedAt, ctx.sync.current.armedAt)
    this.#fleet.add(ctx.traffic.drain(), ctx.traffic.slotMs, now)
    const current = ctx.sync.current
    const active = !current.rolledBack && ctx.traffic.totals('migrated', this.#rules.windowMs).requests > 0
    if (!active && this.#fleet.pending === 0) return undefined
    let totals: FleetTotals | undefined
    if (isReady(ctx.redis)) {
      totals = await this.#fleet.exchange(now, this.#armedAt).catch(() => undefined)
    }
    if (!active) return undefined // the counts are shared; there is nothing to judge here
    const source = totals === undefined ? 'local' : 'fleet'
    totals ??= this.#localTotals(now)
    const evaluation: L1Evaluation = { at: now, source, totals, verdict: judge(totals, this.#rules) }
    this.#last = evaluation
    this.#events.emit('evaluated', evaluation)
    if (!evaluation.verdict.trip) {
      this.#dryRunTripped = false
    } else if (this.#rules.dryRun) {
      if (!this.#dryRunTripped) dryRunTrip(ctx, this.#events, 'L1', evaluation.verdict.reason, { source, totals })
      this.#dryRunTripped = true
    } else if (!ctx.sync.current.rolledBack) {
      await tripRollout(ctx, this.#events, 'L1', evaluation.verdict.reason, { source, window: evaluation.verdict.window, totals })
    }
    return evaluation
  }

  /** This instance's own counts, for when the fleet's cannot be read. */
  #localTotals (now: number): FleetTotals {
    const since = this.#armedAt === 0 ? Infinity : now - this.#armedAt
    const window = (ms: number): FleetTotals['fast'] => ({
      legacy: this.#ctx.traffic.totals('legacy', Math.min(ms, since)),
      migrated: this.#ctx.traffic.totals('migrated', Math.min(ms, since))
    })
    return { fast: window(this.#rules.fastWindowMs), long: window(this.#rules.windowMs) }
  }

  /** A resume re-arms the guard: what happened before it no longer counts. */
  readonly #onChange = (next: RolloutSnapshot, previous: RolloutSnapshot): void => {
    if (previous.rolledBack && !next.rolledBack) {
      this.#armedAt = this.#ctx.now()
      this.#dryRunTripped = false
      this.#ctx.log.info({ guard: 'L1' }, 'L1 guard re-armed after the rollout resumed')
    }
  }

  #schedule (): void {
    if (this.#closed) return
    this.#timer = setTimeout(() => {
      this.#running = this.evaluate().then(() => {}, (err: unknown) => {
        this.#ctx.log.warn({ err, guard: 'L1' }, 'L1 evaluation failed')
      }).finally(() => {
        this.#running = undefined
        this.#schedule()
      })
    }, this.#rules.evaluateIntervalMs)
    this.#timer.unref()
  }
}
