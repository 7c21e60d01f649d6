import { createHash } from 'node:crypto'
import type { Version } from '../routing/decide.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutKeys } from '../rollout/keys.ts'
import type { Counts, SlotCounts } from '../traffic/window.ts'

/** The two windows the L1 guard judges, each over the whole fleet. */
export type WindowName = 'fast' | 'long'
export type FleetTotals = Record<WindowName, Record<Version, Counts>>

/** One window's slots in Redis: a slot is `widthMs` wide, `slots` of them cover the window. */
interface Resolution {
  windowMs: number
  widthMs: number
  slots: number
  ttlSeconds: number
}

interface Pending extends Counts {
  version: Version
  window: WindowName
  index: number
}

// Adds this instance's counts to the slot keys ("<requests> <errors>", expiring), then reads the window's keys:
// one round trip, and one MGET however long the window.
const EXCHANGE = `
local writes = tonumber(ARGV[1])
for i = 1, writes do
  local old = redis.call('GET', KEYS[i])
  local r, e = 0, 0
  if old then
    local a, b = string.match(old, '^(%d+) (%d+)$')
    r, e = tonumber(a) or 0, tonumber(b) or 0
  end
  local at = 2 + (i - 1) * 3
  redis.call('SET', KEYS[i], string.format('%d %d', r + tonumber(ARGV[at]), e + tonumber(ARGV[at + 1])), 'EX', ARGV[at + 2])
end
if #KEYS > writes then return redis.call('MGET', unpack(KEYS, writes + 1)) end
return {}
`
const EXCHANGE_SHA = createHash('sha1').update(EXCHANGE).digest('hex')

/** Slots per window: coarse enough to keep the read small, fine enough that the window slides smoothly. */
const FAST_SLOTS = 5
const LONG_SLOTS = 10

/**
 * The fleet's request and error counts per version, shared through Redis in expiring time slots. Each instance
 * adds what it counted since the last exchange and reads back the fleet's totals, in one script call per
 * evaluation; nothing is sent per request. Counts that could not be sent (Redis away) are kept and sent later,
 * as long as they still fall inside the window.
 */
export class FleetCounts {
  readonly #redis: RedisClient
  readonly #keys: RolloutKeys
  readonly #versions: readonly Version[]
  readonly #resolutions: Record<WindowName, Resolution>
  readonly #pending = new Map<string, Pending>()

  constructor (redis: RedisClient, keys: RolloutKeys, options: { fastMs: number, longMs: number, localSlotMs: number, versions: readonly Version[] }) {
    this.#redis = redis
    this.#keys = keys
    this.#versions = options.versions
    const resolution = (windowMs: number, slots: number): Resolution => {
      const widthMs = Math.max(options.localSlotMs, Math.ceil(windowMs / slots / options.localSlotMs) * options.localSlotMs)
      const count = Math.ceil(windowMs / widthMs)
      return { windowMs, widthMs, slots: count, ttlSeconds: Math.ceil(((count + 2) * widthMs) / 1000) }
    }
    this.#resolutions = { fast: resolution(options.fastMs, FAST_SLOTS), long: resolution(options.longMs, LONG_SLOTS) }
  }

  /** Slot widths, for /status and the cost figures in docs/performance.md. */
  get slotWidths (): Record<WindowName, number> {
    return { fast: this.#resolutions.fast.widthMs, long: this.#resolutions.long.widthMs }
  }

  get pending (): number {
    return this.#pending.size
  }

  /** Takes counts drained from the local traffic window (slots of `slotMs`) to send at the next exchange. */
  add (drained: SlotCounts[], slotMs: number, now: number): void {
    for (const counts of drained) {
      if (!this.#versions.includes(counts.version)) continue
      for (const window of ['fast', 'long'] as const) {
        // Two windows with the same slot width share their Redis keys: count into them once.
        if (window === 'long' && this.#resolutions.long.widthMs === this.#resolutions.fast.widthMs) continue
        const index = Math.floor((counts.slot * slotMs) / this.#resolutions[window].widthMs)
        const id = `${window}|${counts.version}|${index}`
        const entry = this.#pending.get(id) ?? { version: counts.version, window, index, requests: 0, errors: 0 }
        entry.requests += counts.requests
        entry.errors += counts.errors
        this.#pending.set(id, entry)
      }
    }
    this.#forgetStale(now)
  }

  /**
   * Sends the pending counts and returns the fleet's totals per window and version, counting only slots that
   * began at or after `since` (so that a resumed rollout is not judged on what happened before it resumed).
   * Throws when Redis cannot be reached; the pending counts are then kept.
   */
  async exchange (now: number, since: number): Promise<FleetTotals> {
    const writes = [...this.#pending.values()]
    const keys: string[] = []
    const args: Array<string | number> = [writes.length]
    for (const entry of writes) {
      const resolution = this.#resolutions[entry.window]
      keys.push(this.#slotKey(entry.version, resolution, entry.index))
      args.push(entry.requests, entry.errors, resolution.ttlSeconds)
    }
    const reads: Array<{ window: WindowName, version: Version }> = []
    for (const window of ['fast', 'long'] as const) {
      const resolution = this.#resolutions[window]
      const current = Math.floor(now / resolution.widthMs)
      const first = Math.max(current - resolution.slots + 1, Math.ceil(since / resolution.widthMs))
      for (const version of this.#versions) {
        for (let index = first; index <= current; index++) {
          keys.push(this.#slotKey(version, resolution, index))
          reads.push({ window, version })
        }
      }
    }
    const values = await this.#run(keys, args) as Array<string | null>
    for (const entry of writes) this.#pending.delete(`${entry.window}|${entry.version}|${entry.index}`)
    const totals: FleetTotals = { fast: zero(), long: zero() }
    values.forEach((value, i) => {
      const read = reads[i]
      if (value === null || read === undefined) return
      const [requests, errors] = value.split(' ').map(Number)
      const counts = totals[read.window][read.version]
      counts.requests += Number.isFinite(requests) ? requests as number : 0
      counts.errors += Number.isFinite(errors) ? errors as number : 0
    })
    return totals
  }

  #slotKey (version: Version, resolution: Resolution, index: number): string {
    return this.#keys.traffic(version, `${resolution.widthMs}:${index}`)
  }

  async #run (keys: string[], args: Array<string | number>): Promise<unknown> {
    try {
      return await this.#redis.evalsha(EXCHANGE_SHA, keys.length, ...keys, ...args)
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
      return await this.#redis.eval(EXCHANGE, keys.length, ...keys, ...args)
    }
  }

  /** Counts older than their window are of no use to anyone: drop them rather than grow while Redis is away. */
  #forgetStale (now: number): void {
    for (const [id, entry] of this.#pending) {
      const resolution = this.#resolutions[entry.window]
      if ((entry.index + resolution.slots) * resolution.widthMs <= now) this.#pending.delete(id)
    }
  }
}

function zero (): Record<Version, Counts> {
  return { legacy: { requests: 0, errors: 0 }, migrated: { requests: 0, errors: 0 } }
}
