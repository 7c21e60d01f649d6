import picomatch from 'picomatch'
import { every, type Periodic } from '../background.ts'
import { isReady } from '../rollout/redis.ts'
import { normalisePath } from '../routing/path.ts'
import type { GuardContext, GuardEmitter } from './events.ts'
import { LOAD_RULE, parseLoad, queryPrometheus } from './load-signal.ts'
import { dryRunTrip } from './trip.ts'

/**
 * L2: while the primary database is overloaded, pause the new-feature routes (503 with Retry-After) and freeze
 * the ramp. The load comes from the `signal:db_load` key (read with the other signals) or from a Prometheus
 * query. It must stay above the threshold for `sustainMs` before the guard acts, and back under it for the same
 * time before it lets go, so a spike or a dip does not make it flap. The `freeze` key is the fleet's view: an
 * instance that finds it set pauses too, and the first to freeze or thaw records it in the audit stream.
 */
export class DbLoadGuard {
  readonly #ctx: GuardContext
  readonly #events: GuardEmitter
  readonly #rules: GuardContext['config']['guards']['l2']
  readonly #isFeature: (path: string) => boolean
  /** Acting (or, in dry run, would be acting): feature routes closed and the ramp frozen. */
  #engaged = false
  #load: number | undefined
  #loadAt = 0
  #aboveSince: number | undefined
  #belowSince: number | undefined
  /** A freeze (true) or thaw (false) not yet written to Redis. */
  #unwritten: boolean | undefined
  #reason = ''
  #badValue: string | undefined
  #queryFailing = false
  #poll: Periodic | undefined

  constructor (ctx: GuardContext, events: GuardEmitter) {
    this.#ctx = ctx
    this.#events = events
    this.#rules = ctx.config.guards.l2
    const routes = this.#rules.featureRoutes
    this.#isFeature = routes.length === 0 ? () => false : picomatch(routes, { dot: true })
  }

  /** True when the load comes from Redis (read by the signal poll), false when from Prometheus. */
  get readsRedisSignal (): boolean {
    return this.#rules.prometheusUrl === undefined
  }

  get paused (): boolean {
    return this.#engaged && !this.#rules.dryRun
  }

  start (): void {
    if (!this.readsRedisSignal) {
      this.#poll = every('the L2 Prometheus query', async () => { await this.#query() }, { intervalMs: this.#rules.pollIntervalMs, log: this.#ctx.log })
    }
  }

  async close (): Promise<void> {
    await this.#poll?.stop()
  }

  /**
   * Seconds for Retry-After when `url` is a paused feature route, else 0. On the hot path: cheap when open.
   * Matched on the normalised path, as routes are; a target that has none is matched as sent.
   */
  pausedFor (url: string): number {
    if (!this.#engaged || this.#rules.dryRun) return 0
    const path = normalisePath(url)
    const query = url.indexOf('?')
    return this.#isFeature(typeof path === 'string' ? path : query === -1 ? url : url.slice(0, query)) ? this.#rules.retryAfterSeconds : 0
  }

  /** The signal poll's reading: the load key's text (null = missing) and whether the freeze key exists. */
  onSignals (loadText: string | null | undefined, freezeSet: boolean | undefined): void {
    if (loadText !== undefined) this.observe(this.#parse(this.#ctx.store.keys.dbLoadSignal, loadText))
    if (freezeSet !== undefined) this.#follow(freezeSet)
    this.#write()
  }

  /** One load reading (undefined: none or invalid, which holds the current state). */
  observe (load: number | undefined): void {
    if (load === undefined) return
    const now = this.#ctx.now()
    this.#load = load
    this.#loadAt = now
    if (load > this.#rules.threshold) {
      this.#belowSince = undefined
      this.#aboveSince ??= now
      if (!this.#engaged && now - this.#aboveSince >= this.#rules.sustainMs) {
        this.#engage(`database load ${load} above ${this.#rules.threshold} since ${new Date(this.#aboveSince).toISOString()}`)
      }
    } else {
      this.#aboveSince = undefined
      this.#belowSince ??= now
      if (this.#engaged && now - this.#belowSince >= this.#rules.sustainMs) {
        this.#release(`database load ${load} back under ${this.#rules.threshold} since ${new Date(this.#belowSince).toISOString()}`)
      }
    }
  }

  status (): Record<string, unknown> {
    const iso = (ms: number | undefined): string | null => ms === undefined || ms === 0 ? null : new Date(ms).toISOString()
    return {
      source: this.readsRedisSignal ? this.#ctx.store.keys.dbLoadSignal : 'prometheus',
      load: this.#load ?? null,
      loadAt: iso(this.#loadAt),
      aboveSince: iso(this.#aboveSince),
      belowSince: iso(this.#belowSince),
      paused: this.paused,
      wouldPause: this.#rules.dryRun && this.#engaged,
      reason: this.#engaged ? this.#reason : null
    }
  }

  #engage (reason: string): void {
    this.#engaged = true
    this.#reason = reason
    if (this.#rules.dryRun) return dryRunTrip(this.#ctx, this.#events, 'L2', reason)
    this.#ctx.metrics.l2Paused.set(1)
    this.#ctx.metrics.guardTrips.labels('L2').inc()
    this.#ctx.log.error({ guard: 'L2', reason, routes: this.#rules.featureRoutes }, `L2 guard: ${reason}; pausing the new-feature routes and freezing the ramp`)
    this.#unwritten = true
    this.#write()
    this.#events.emit('l2', true, reason)
  }

  #release (reason: string): void {
    this.#engaged = false
    this.#reason = ''
    if (this.#rules.dryRun) {
      this.#ctx.log.info({ guard: 'L2', dryRun: true, reason }, `L2 guard would have reopened (dry run): ${reason}`)
      return
    }
    this.#ctx.metrics.l2Paused.set(0)
    this.#ctx.log.warn({ guard: 'L2', reason }, `L2 guard: ${reason}; reopening the new-feature routes and the ramp`)
    this.#unwritten = false
    this.#write()
    this.#events.emit('l2', false, reason)
  }

  /** Follows the fleet: a freeze set elsewhere pauses here too; one lifted elsewhere (load under) reopens. */
  #follow (freezeSet: boolean): void {
    if (this.#rules.dryRun || this.#unwritten !== undefined || freezeSet === this.#engaged) return
    const under = this.#load !== undefined && this.#load <= this.#rules.threshold
    if (freezeSet) {
      this.#engaged = true
      this.#reason = 'the ramp was frozen by another instance'
      this.#ctx.metrics.l2Paused.set(1)
      this.#ctx.log.warn({ guard: 'L2' }, 'L2 guard: the ramp is frozen fleet-wide; pausing the new-feature routes here too')
      this.#events.emit('l2', true, this.#reason)
    } else if (under) {
      this.#engaged = false
      this.#reason = ''
      this.#aboveSince = undefined
      this.#ctx.metrics.l2Paused.set(0)
      this.#ctx.log.warn({ guard: 'L2' }, 'L2 guard: the freeze was lifted fleet-wide; reopening the new-feature routes here too')
      this.#events.emit('l2', false, 'the freeze was lifted by another instance')
    }
  }

  /** Writes a freeze or thaw to Redis; retried at every signal poll until it succeeds. */
  #write (): void {
    const wanted = this.#unwritten
    if (wanted === undefined || !isReady(this.#ctx.redis)) return
    const actor = { by: this.#ctx.instanceId, source: 'guard' as const }
    const control = this.#ctx.control
    const done = wanted ? control.freeze(`L2: ${this.#reason}`, actor) : control.unfreeze(actor, 'L2: the database load is back under the threshold')
    done.then(() => {
      if (this.#unwritten === wanted) this.#unwritten = undefined
    }, (err: unknown) => {
      this.#ctx.log.warn({ err, guard: 'L2' }, 'writing the L2 freeze to Redis failed; will retry')
    })
  }

  #parse (key: string, text: string | null): number | undefined {
    if (text === null) return undefined
    const load = parseLoad(text)
    if (load === undefined && this.#badValue !== text) {
      this.#ctx.metrics.configErrors.inc()
      this.#ctx.log.error({ key, value: text, rule: LOAD_RULE }, `ignored an invalid value in Redis: ${key} must be ${LOAD_RULE}; the L2 guard keeps its state`)
    }
    this.#badValue = load === undefined ? text : undefined
    return load
  }

  /** One Prometheus query; a failure keeps the current state and is said once per failure streak. */
  async #query (): Promise<void> {
    const url = this.#rules.prometheusUrl as string
    try {
      const { value, raw } = await queryPrometheus(url, Math.min(this.#rules.pollIntervalMs, 5_000))
      this.#queryFailing = false
      if (value === undefined) this.#parse('prometheus', raw)
      this.observe(value)
      this.#write()
    } catch (err) {
      this.#ctx.metrics.backgroundErrors.labels('l2_prometheus').inc()
      if (!this.#queryFailing) this.#ctx.log.warn({ err, guard: 'L2', url }, 'the L2 Prometheus query failed; keeping the current state')
      this.#queryFailing = true
    }
  }
}
