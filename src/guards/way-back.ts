import { every, type Periodic } from '../background.ts'
import type { FenceRelease } from '../control/commands.ts'
import { isReady } from '../rollout/redis.ts'
import type { RolloutSnapshot } from '../rollout/snapshot.ts'
import { LAG_RULE, parseLag, WAY_BACK_MODES } from '../rollout/values.ts'
import { caughtUpTo, covers, judgeWayBack, type Fence, type ReverseLag, type WayBackVerdict } from '../rollout/way-back.ts'
import type { Router, RoutingState } from '../routing/decide.ts'
import type { RequestClass, Route } from '../routing/routes.ts'
import type { GuardContext, GuardEmitter } from './events.ts'
import { queryPrometheus } from './load-signal.ts'

/**
 * The way back on one instance: follows the reverse lag (the `signal:reverse_lag` key on the signal poll, or a
 * Prometheus query), keeps the way-back gauges, answers the forwarder's `fenced` hook, and lifts the fence when
 * a reading taken after it began shows the reverse sync past the fence moment, when `signal:data_restored`
 * holds its id, or on timeout as `onTimeout` says. Every lift goes through the command layer, so the first
 * instance to see it lifts it for the fleet and the others find it gone.
 */
export class WayBackGuard {
  readonly #ctx: GuardContext
  readonly #events: GuardEmitter
  readonly #lag: ReverseLag
  readonly #router: Router
  readonly #rules: GuardContext['config']['guards']['wayBack']
  readonly #pollMs: number
  #restored: string | null = null
  #query: Periodic | undefined
  #queryFailing = false
  #badQueryValue: string | undefined
  /** The routing state before the rollback that engaged the fence: who was migrated then is the moving cohort. */
  #before: RoutingState | undefined
  #beforeOf: RolloutSnapshot | undefined
  #lifting: Promise<void> | undefined

  constructor (ctx: GuardContext, events: GuardEmitter, lag: ReverseLag, router: Router) {
    this.#ctx = ctx
    this.#events = events
    this.#lag = lag
    this.#router = router
    this.#rules = ctx.config.guards.wayBack
    this.#pollMs = ctx.config.guards.signalPollIntervalMs
    ctx.sync.on('change', this.#onChange)
    this.#gauges()
  }

  /** True when the lag comes from the Redis key (read by the signal poll), false when from Prometheus. */
  get readsRedisSignal (): boolean {
    return this.#rules.lagQuery === undefined
  }

  start (): void {
    if (this.readsRedisSignal) return
    this.#query = every('the reverse lag Prometheus query', async () => { await this.#queryLag() }, { intervalMs: this.#pollMs, immediately: true, log: this.#ctx.log })
  }

  async close (): Promise<void> {
    this.#ctx.sync.off('change', this.#onChange)
    await this.#query?.stop()
    await this.#lifting
  }

  /**
   * Seconds for Retry-After when this request is a write of the fenced cohort, else 0. On the hot path: one
   * property read while no fence is in force; then a decision on the routing state from before the rollback.
   */
  fenced (cls: RequestClass, route: Route, key: string | undefined): number {
    const current = this.#ctx.sync.current
    const fence = current.fence
    if (fence === undefined || cls !== 'write') return 0
    if (this.#beforeOf !== current) {
      this.#beforeOf = current
      this.#before = { rolledBack: false, percent: fence.percent, allow: current.allow, deny: current.deny }
    }
    if (this.#router.decide(this.#before as RoutingState, key, 'write', route).version !== 'migrated') return 0
    this.#ctx.metrics.fencedRequests.inc()
    return retryAfter(fence, this.#ctx.now(), this.#pollMs)
  }

  /** The signal poll's reading: the reverse lag key (value and PTTL) and the data-restored key. */
  onSignals (lagText: string | null | undefined, lagTtl: number | undefined, restored: string | null | undefined): void {
    const now = this.#ctx.now()
    if (lagText !== undefined) {
      const bad = this.#lag.observe(lagText, lagTtl ?? -2, now)
      if (bad !== undefined) this.#invalid(this.#ctx.store.keys.reverseLagSignal, bad)
    }
    if (restored !== undefined) this.#restored = restored
    this.evaluate()
  }

  /** The verdict now, for /status and the gauges. */
  verdict (): WayBackVerdict {
    return judgeWayBack(this.#ctx.sync.current.wayBack, this.#lag.reading, this.#ctx.now(), { maxLagSeconds: this.#rules.maxLagSeconds, pollMs: this.#pollMs })
  }

  status (): Record<string, unknown> {
    const verdict = this.verdict()
    const reading = this.#lag.reading
    const fence = this.#ctx.sync.current.fence
    const hand = this.#ctx.control.handRaise
    return {
      mode: verdict.mode,
      rollbackSafe: verdict.safe,
      why: verdict.why,
      raisesAllowed: verdict.ready,
      lagSeconds: verdict.lagSeconds,
      source: this.readsRedisSignal ? this.#ctx.store.keys.reverseLagSignal : 'prometheus',
      reading: reading === undefined ? null : { lagSeconds: reading.lag, seenAt: iso(reading.seenAt), caughtUpTo: iso(caughtUpTo(reading, this.#pollMs)) },
      fence: fence === undefined ? null : fenceJson(fence),
      handRaise: hand === undefined ? null : { at: iso(hand.at), value: hand.value, warning: hand.warning }
    }
  }

  /** Lifts (or holds) the fence when its time has come; the gauges follow. */
  evaluate (): void {
    this.#gauges()
    const fence = this.#ctx.sync.current.fence
    if (fence === undefined || this.#lifting !== undefined || this.#ctx.sync.rollbackPending || !isReady(this.#ctx.redis)) return
    const reading = this.#lag.reading
    let how: FenceRelease | undefined
    let reason = ''
    if (this.#restored === fence.id) {
      how = 'restored'
      reason = `${this.#ctx.store.keys.dataRestoredSignal} holds the fence id ${fence.id}: the data rollback is done`
    } else if (fence.level !== 'L3' && reading !== undefined && covers(reading, fence, this.#pollMs)) {
      how = 'caught_up'
      reason = `the reverse sync caught up to ${iso(caughtUpTo(reading, this.#pollMs))}, past the fence at ${iso(fence.at)} (${reading.lag} s behind, seen ${iso(reading.seenAt)})`
    } else if (fence.deadline !== undefined && this.#ctx.now() >= fence.deadline) {
      if (this.#rules.onTimeout === 'hold') {
        if (!fence.held) this.#track(this.#hold(fence))
        return
      }
      how = 'timeout'
      reason = `the fence timed out after ${this.#rules.fenceTimeoutMs} ms before the reverse sync caught up (${reading === undefined ? 'no reading of the lag' : `last reading ${reading.lag} s behind, seen ${iso(reading.seenAt)}`}); writes go to legacy, which may lack some of them`
    }
    if (how !== undefined) this.#track(this.#release(fence, how, reason))
  }

  async #release (fence: Fence, how: FenceRelease, reason: string): Promise<void> {
    const result = await this.#ctx.control.releaseFence(fence.id, how, { by: this.#ctx.instanceId, source: 'guard' }, reason)
    if (result.status === 'ok') this.#events.emit('fence', 'released', fence.id, how)
  }

  async #hold (fence: Fence): Promise<void> {
    if (await this.#ctx.control.holdFence(fence.id, { by: this.#ctx.instanceId, source: 'guard' })) {
      this.#ctx.log.error({ fence: fence.id }, 'the fence timed out and is held (onTimeout: hold): the cohort\'s writes stay refused until "dbshift fence release"')
      this.#events.emit('fence', 'held', fence.id, 'timeout')
    }
  }

  #track (work: Promise<void>): void {
    this.#lifting = work
      .catch((err: unknown) => { this.#ctx.log.warn({ err }, 'lifting the fence failed; trying again at the next signal poll') })
      .finally(() => { this.#lifting = undefined })
  }

  #gauges (): void {
    const verdict = this.verdict()
    const metrics = this.#ctx.metrics
    for (const mode of WAY_BACK_MODES) metrics.wayBack.labels(mode).set(mode === verdict.mode ? 1 : 0)
    metrics.reverseLag.set(verdict.lagSeconds ?? Number.NaN)
    metrics.rollbackSafe.set(verdict.safe ? 1 : 0)
    metrics.writesFenced.set(this.#ctx.sync.current.fence === undefined ? 0 : 1)
  }

  #invalid (key: string, value: string): void {
    this.#ctx.metrics.configErrors.inc()
    this.#ctx.log.error({ key, value, rule: LAG_RULE }, `ignored an invalid value: ${key} must be ${LAG_RULE}; the last valid reading ages on`)
  }

  async #queryLag (): Promise<void> {
    const url = this.#rules.lagQuery as string
    try {
      const { raw } = await queryPrometheus(url, Math.min(this.#pollMs, 5_000))
      this.#queryFailing = false
      const lag = parseLag(raw)
      if (lag === undefined && this.#badQueryValue !== raw) this.#invalid('guards.wayBack.lagQuery', raw)
      this.#badQueryValue = lag === undefined ? raw : undefined
      if (lag !== undefined) this.#lag.observeValue(lag, this.#ctx.now())
    } catch (err) {
      this.#ctx.metrics.backgroundErrors.labels('signal_poll').inc()
      if (!this.#queryFailing) this.#ctx.log.warn({ err, url }, 'the reverse lag Prometheus query failed; the last reading ages on')
      this.#queryFailing = true
    }
    this.evaluate()
  }

  readonly #onChange = (next: RolloutSnapshot, previous: RolloutSnapshot): void => {
    if (next.fence !== previous.fence || next.wayBack !== previous.wayBack) this.#gauges()
    if (next.fence !== undefined && previous.fence === undefined) this.#ctx.log.warn({ fence: fenceJson(next.fence) }, 'writes of the moving cohort are fenced until legacy has their data')
    if (next.fence === undefined && previous.fence !== undefined) this.#ctx.log.info({ fence: previous.fence.id }, 'the fence is lifted: the moving cohort writes to legacy again')
  }
}

/** Seconds until the fence may lift: its deadline, or one signal poll when it has none (or is held). */
function retryAfter (fence: Fence, now: number, pollMs: number): number {
  const poll = Math.max(1, Math.ceil(pollMs / 1000))
  if (fence.deadline === undefined || fence.deadline <= now) return poll
  return Math.max(1, Math.min(Math.ceil((fence.deadline - now) / 1000), 60))
}

export function fenceJson (fence: Fence): Record<string, unknown> {
  return { id: fence.id, level: fence.level, reason: fence.reason, at: iso(fence.at), deadline: fence.deadline === undefined ? null : iso(fence.deadline), percent: fence.percent, held: fence.held }
}

function iso (ms: number): string {
  return new Date(ms).toISOString()
}
