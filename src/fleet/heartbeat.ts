import type { Logger } from 'pino'
import { VERSIONS, type Version } from '../routing/decide.ts'
import type { RolloutKeys } from '../rollout/keys.ts'
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
  /** When the beat was written, and when it stops counting (ms, the instance's clock). */
  at: number
  expiresAt: number
}

/** The window the reported rates cover. */
export const RATE_WINDOW_MS = 10_000

// Writes this instance's beat, sometimes drops the beats that expired (their instance is gone; readers skip them
// anyway), and keeps the whole hash expiring so that a fleet that stopped leaves nothing behind.
const BEAT = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[5] == '1' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local ok, beat = pcall(cjson.decode, all[i + 1])
    if not ok or type(beat) ~= 'table' or (tonumber(beat.expiresAt) or 0) < tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`

/** One beat in this many also prunes the expired ones: a large fleet does not decode the whole hash every beat. */
const PRUNE_EVERY = 10

export interface HeartbeatOptions {
  instanceId: string
  redis: RedisClient
  keys: RolloutKeys
  sync: RolloutSync
  traffic: TrafficWindow
  intervalMs: number
  now: () => number
  log: Logger
}

/**
 * Keeps this instance's entry in the fleet view (`instances` hash): what it applies, when it last heard from
 * Redis and its per-version rates. It beats on a timer and right after each change of the rollout, so that
 * `dbshift status` shows within moments whether every instance follows the dial.
 */
export class Heartbeat {
  readonly #o: HeartbeatOptions
  #timer: NodeJS.Timeout | undefined
  #soon: NodeJS.Timeout | undefined
  #closed = false
  #beats = 0
  readonly #onChange = (): void => {
    this.#soon ??= setTimeout(() => {
      this.#soon = undefined
      this.beat().catch(() => {})
    }, 20)
    this.#soon.unref()
  }

  constructor (options: HeartbeatOptions) {
    this.#o = options
  }

  start (): void {
    this.#o.sync.on('change', this.#onChange)
    this.#o.sync.on('persisted', this.#onChange)
    const loop = (): void => {
      if (this.#closed) return
      this.beat().catch((err: unknown) => { this.#o.log.debug({ err }, 'heartbeat failed') })
      this.#timer = setTimeout(loop, this.#o.intervalMs)
      this.#timer.unref()
    }
    loop()
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
    return { id: instanceId, percent: snapshot.percent, state: snapshot.state, lastSyncAt: sync.lastSyncAt, rollbackPending: sync.rollbackPending, traffic: rates, at, expiresAt: at + intervalMs * 3 }
  }

  async beat (): Promise<void> {
    const { redis, keys, intervalMs } = this.#o
    if (this.#closed || !isReady(redis)) return
    const beat = this.current()
    const prune = this.#beats++ % PRUNE_EVERY === 0 ? '1' : '0'
    await redis.eval(BEAT, 1, keys.instances, beat.id, JSON.stringify(beat), beat.at, intervalMs * 3, prune)
  }

  /** Leaves the fleet view at once on a graceful stop. */
  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    clearTimeout(this.#soon)
    this.#o.sync.off('change', this.#onChange)
    this.#o.sync.off('persisted', this.#onChange)
    if (isReady(this.#o.redis)) await this.#o.redis.hdel(this.#o.keys.instances, this.#o.instanceId).catch(() => {})
  }
}

function round (value: number): number {
  return Math.round(value * 1e4) / 1e4
}
