import type { Logger } from 'pino'
import { every, Listeners, type Periodic } from '../background.ts'
import type { RolloutControl } from '../control/commands.ts'
import type { PoolSummary } from '../health/pool-health.ts'
import { VERSIONS, type Version } from '../routing/decide.ts'
import { isReady, type RedisClient } from '../rollout/redis.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { TrafficWindow } from '../traffic/window.ts'

/** What one instance applies now, as it reports it to the fleet view. */
export interface InstanceBeat {
  id: string
  percent: number
  state: string
  /** When this instance last read Redis (ms; 0 = never). */
  lastSyncAt: number
  /** A local rollback waits to be written to Redis. */
  rollbackPending: boolean
  traffic: Record<Version, { rps: number, errorRate: number }>
  /** Whether a member of the migrated pool passes its health checks here (the gate of `dbshift set`). */
  migratedHealthy?: boolean
  /** Each pool's members as this instance sees them: how many take requests, and which do not. */
  pools?: Record<Version, PoolSummary>
  /** When the beat was written, and when it stops counting (ms, the instance's clock). */
  at: number
  expiresAt: number
}

/** The window the reported rates cover. */
export const RATE_WINDOW_MS = 10_000

/** One beat in this many also prunes the expired ones: a large fleet does not decode the whole hash every beat. */
const PRUNE_EVERY = 10

export interface HeartbeatOptions {
  instanceId: string
  redis: RedisClient
  control: RolloutControl
  sync: RolloutSync
  traffic: TrafficWindow
  intervalMs: number
  now: () => number
  log: Logger
  /** Counts failed beats. */
  failures?: { inc: () => void }
  migratedHealthy?: () => boolean
  pools?: () => Record<Version, PoolSummary>
}

/**
 * Keeps this instance's entry in the fleet view (`instances` hash): what it applies, when it last heard from
 * Redis and its per-version rates. It beats on a timer and right after each change of the rollout, so that
 * `dbshift status` shows within moments whether every instance follows the dial.
 */
export class Heartbeat {
  readonly #o: HeartbeatOptions
  #periodic: Periodic | undefined
  #soon: NodeJS.Timeout | undefined
  #closed = false
  #beats = 0
  readonly #listeners = new Listeners()
  readonly #onChange = (): void => {
    this.#soon ??= setTimeout(() => {
      this.#soon = undefined
      this.beat().catch((err: unknown) => {
        this.#o.failures?.inc()
        this.#o.log.debug({ err }, 'heartbeat after a change failed; the next one follows')
      })
    }, 20)
    this.#soon.unref()
  }

  constructor (options: HeartbeatOptions) {
    this.#o = options
  }

  start (): void {
    this.#listeners.on(this.#o.sync, 'change', this.#onChange)
    this.#listeners.on(this.#o.sync, 'persisted', this.#onChange)
    this.#periodic = every('the heartbeat', async () => { await this.beat() }, { intervalMs: this.#o.intervalMs, immediately: true, log: this.#o.log, failures: this.#o.failures })
  }

  /** This instance's beat now. */
  current (): InstanceBeat {
    const { sync, traffic, now, intervalMs, instanceId } = this.#o
    const at = now()
    const rates = Object.fromEntries(VERSIONS.map((version) => {
      const { requests, errors } = traffic.totals(version, RATE_WINDOW_MS)
      return [version, { rps: round(requests / (RATE_WINDOW_MS / 1000)), errorRate: requests === 0 ? 0 : round(errors / requests) }]
    })) as InstanceBeat['traffic']
    const snapshot = sync.current
    return { id: instanceId, percent: snapshot.percent, state: snapshot.state, lastSyncAt: sync.lastSyncAt, rollbackPending: sync.rollbackPending, traffic: rates, migratedHealthy: this.#o.migratedHealthy?.(), pools: this.#o.pools?.(), at, expiresAt: at + intervalMs * 3 }
  }

  async beat (): Promise<void> {
    const { redis, control, intervalMs } = this.#o
    if (this.#closed || !isReady(redis)) return
    const beat = this.current()
    await control.beat(beat.id, JSON.stringify(beat), beat.at, intervalMs * 3, this.#beats++ % PRUNE_EVERY === 0)
  }

  /** Leaves the fleet view at once on a graceful stop. */
  async close (): Promise<void> {
    this.#closed = true
    await this.#periodic?.stop()
    clearTimeout(this.#soon)
    this.#listeners.removeAll()
    if (isReady(this.#o.redis)) {
      // Not fatal: the beat expires by itself.
      await this.#o.control.leave(this.#o.instanceId).catch((err: unknown) => { this.#o.log.debug({ err }, 'leaving the fleet view failed; the beat expires by itself') })
    }
  }
}

function round (value: number): number {
  return Math.round(value * 1e4) / 1e4
}
