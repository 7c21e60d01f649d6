import { every, type Periodic } from '../background.ts'
import { isReady } from '../rollout/redis.ts'
import type { GuardContext } from './events.ts'

/**
 * Reads the keys the guards watch (the L2 load signal and freeze, the L3 external signal, the way back's reverse
 * lag and data-restored signals) with one MGET every `guards.signalPollIntervalMs`, and in the same round trip the
 * PTTL of the keys whose rewrites count (a reading written again with the same value): a fixed, small cost,
 * whatever the traffic. Nothing is read while Redis is away.
 */
export class SignalPoll {
  readonly #ctx: GuardContext
  readonly #keys: string[]
  readonly #onValues: (values: Map<string, string | null>, ttls: Map<string, number>) => void
  readonly #ttlKeys: string[]
  #periodic: Periodic | undefined
  #closed = false
  #failing = false

  constructor (ctx: GuardContext, keys: string[], onValues: (values: Map<string, string | null>, ttls: Map<string, number>) => void, ttlKeys: string[] = []) {
    this.#ctx = ctx
    this.#keys = keys
    this.#onValues = onValues
    this.#ttlKeys = ttlKeys
  }

  start (): void {
    if (this.#keys.length === 0) return
    this.#periodic = every('the guard signal poll', async () => { await this.poll() }, {
      intervalMs: this.#ctx.config.guards.signalPollIntervalMs,
      immediately: true,
      log: this.#ctx.log
    })
  }

  async close (): Promise<void> {
    this.#closed = true
    await this.#periodic?.stop()
  }

  /** Reads the keys now. */
  async poll (): Promise<void> {
    if (this.#closed || !isReady(this.#ctx.redis)) return
    let values: Array<string | null>
    let ttls: Map<string, number>
    try {
      ({ values, ttls } = await this.#ctx.store.readSignals(this.#keys, this.#ttlKeys))
    } catch (err) {
      this.#ctx.metrics.backgroundErrors.labels('signal_poll').inc()
      if (!this.#failing) this.#ctx.log.warn({ err }, 'reading the guard signals from Redis failed; will retry')
      this.#failing = true
      return
    }
    this.#failing = false
    this.#onValues(new Map(this.#keys.map((key, i) => [key, values[i] ?? null])), ttls)
  }
}
