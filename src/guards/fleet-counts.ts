import type { Version } from '../routing/decide.ts'
import { Scripts } from '../control/scripts.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutKeys } from '../rollout/keys.ts'
import { MAX_USERS_PER_SLOT, type Counts, type SlotCounts } from '../traffic/window.ts'

/** The two windows the L1 guard judges, each over the whole fleet. */
export type WindowName = 'fast' | 'long'
export interface FleetTotals extends Record<WindowName, Record<Version, Counts>> {
  /** Distinct users (hashed user keys, or addresses of anonymous clients) among migrated's errors, per window. */
  failingUsers: Record<WindowName, number>
}

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
  users: Set<string>
}

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
  readonly #scripts: Scripts
  readonly #keys: RolloutKeys
  readonly #versions: readonly Version[]
  readonly #resolutions: Record<WindowName, Resolution>
  readonly #pending = new Map<string, Pending>()

  constructor (redis: RedisClient, keys: RolloutKeys, options: { fastMs: number, longMs: number, localSlotMs: number, versions: readonly Version[] }) {
    this.#scripts = new Scripts(redis, keys)
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
        const entry = this.#pending.get(id) ?? { version: counts.version, window, index, requests: 0, errors: 0, users: new Set<string>() }
        entry.requests += counts.requests
        entry.errors += counts.errors
        for (const hash of counts.failingUsers) if (entry.users.size < MAX_USERS_PER_SLOT) entry.users.add(hash)
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
      const key = this.#slotKey(entry.version, resolution, entry.index)
      keys.push(key, `${key}:users`)
      args.push(entry.requests, entry.errors, resolution.ttlSeconds, entry.users.size, ...entry.users)
    }
    const groups: Array<{ window: WindowName, version: Version }> = []
    const sizes: number[] = []
    for (const window of ['fast', 'long'] as const) {
      const resolution = this.#resolutions[window]
      const current = Math.floor(now / resolution.widthMs)
      const first = Math.max(current - resolution.slots + 1, Math.ceil(since / resolution.widthMs))
      for (const version of this.#versions) {
        groups.push({ window, version })
        sizes.push(Math.max(0, current - first + 1))
        for (let index = first; index <= current; index++) {
          const key = this.#slotKey(version, resolution, index)
          keys.push(key, `${key}:users`)
        }
      }
    }
    args.push(groups.length, ...sizes)
    const reply = await this.#run(keys, args) as unknown[]
    for (const entry of writes) this.#pending.delete(`${entry.window}|${entry.version}|${entry.index}`)
    const totals: FleetTotals = { fast: zero(), long: zero(), failingUsers: { fast: 0, long: 0 } }
    groups.forEach(({ window, version }, g) => {
      const values = reply[g * 2]
      const users = Number(reply[g * 2 + 1])
      const counts = totals[window][version]
      for (const value of Array.isArray(values) ? values as unknown[] : []) {
        if (typeof value !== 'string') continue
        const [requests, errors] = value.split(' ').map(Number)
        counts.requests += Number.isFinite(requests) ? requests as number : 0
        counts.errors += Number.isFinite(errors) ? errors as number : 0
      }
      if (version === 'migrated' && Number.isFinite(users)) totals.failingUsers[window] = users
    })
    return totals
  }

  #slotKey (version: Version, resolution: Resolution, index: number): string {
    return this.#keys.traffic(version, `${resolution.widthMs}:${index}`)
  }

  async #run (keys: string[], args: Array<string | number>): Promise<unknown> {
    return await this.#scripts.run('dbshiftTrafficExchange', keys, args)
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
