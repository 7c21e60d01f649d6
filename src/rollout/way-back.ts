import type { WayBackMode } from './values.ts'
import { parseLag } from './values.ts'

/**
 * The way back: how far the reverse sync (migrated → legacy) has caught up, whether a rollback now would lose a
 * write, and the fence that holds the moving cohort's writes while it catches up. No I/O: the signal poll feeds
 * the readings, the command layer and the guards judge with them.
 */

/** The `fence` hash, parsed. Times are ms since the epoch on the clock of the instance that engaged it. */
export interface Fence {
  id: string
  /** L1, L3 or manual: what rolled back. An L3 fence lifts only on `signal:data_restored` or by hand. */
  level: string
  reason: string
  at: number
  /** When the fence times out (onTimeout); undefined: never (L3). */
  deadline: number | undefined
  /** The dial before the rollback: who was migrated then is the moving cohort. */
  percent: number
  /** Set once a timed-out fence is held (`onTimeout: hold`). */
  held: boolean
}

/** A fence hash as Redis holds it; undefined when it is missing or not a valid fence (then `problem` says why). */
export function parseFence (hash: Record<string, string> | null): { fence?: Fence, problem?: string } {
  if (hash === null || Object.keys(hash).length === 0) return {}
  const at = Date.parse(hash.at ?? '')
  const deadline = hash.deadline === undefined || hash.deadline === '' ? undefined : Date.parse(hash.deadline)
  const percent = Number(hash.percent ?? '')
  if (hash.id === undefined || hash.id === '' || !Number.isFinite(at) || (deadline !== undefined && !Number.isFinite(deadline)) || !(percent >= 0 && percent <= 100)) {
    return { problem: JSON.stringify(hash).slice(0, 200) }
  }
  return { fence: { id: hash.id, level: hash.level ?? '', reason: hash.reason ?? '', at, deadline, percent, held: (hash.held ?? '') !== '' } }
}

export const FENCE_RULE = 'a hash with id, level, reason, at (ISO time), deadline (ISO time, or empty) and percent'

/** One reading of the reverse lag: `lag` seconds behind, first seen by this instance at `seenAt`. */
export interface LagReading {
  lag: number
  seenAt: number
}

/**
 * Turns the polled `signal:reverse_lag` key into readings. A reading counts from when it is first seen: a new
 * value, or the same value written again (its TTL jumps back up). An expired or deleted key is unknown.
 */
export class ReverseLag {
  #reading: LagReading | undefined
  #text: string | null = null
  #ttl = -2
  #badValue: string | undefined

  /** The reading in force, or undefined while the lag is unknown. */
  get reading (): LagReading | undefined {
    return this.#reading
  }

  /**
   * The key's value and its PTTL (ms; -1 no expiry, -2 missing) at `now`. Returns the invalid text the first
   * time it is seen (for the caller to log and count), else undefined.
   */
  observe (text: string | null, ttlMs: number, now: number): string | undefined {
    const previousText = this.#text
    const previousTtl = this.#ttl
    this.#text = text
    this.#ttl = ttlMs
    if (text === null) {
      this.#reading = undefined
      this.#badValue = undefined
      return undefined
    }
    const lag = parseLag(text)
    if (lag === undefined) {
      // Bad input: the last valid reading ages on (and goes stale), it is never refreshed by garbage.
      const first = this.#badValue !== text
      this.#badValue = text
      return first ? text : undefined
    }
    this.#badValue = undefined
    const rewritten = ttlMs > 0 && previousTtl > 0 && ttlMs > previousTtl
    if (this.#reading === undefined || text !== previousText || rewritten) this.#reading = { lag, seenAt: now }
    return undefined
  }

  /** A reading from a query (Prometheus): every answer is a new reading. */
  observeValue (lag: number | undefined, now: number): void {
    this.#reading = lag === undefined ? undefined : { lag, seenAt: now }
  }
}

/** How far the reverse sync has caught up at least, on this instance's clock: t − L − one poll interval. */
export function caughtUpTo (reading: LagReading, pollMs: number): number {
  return reading.seenAt - reading.lag * 1000 - pollMs
}

/** True when `reading`, taken after the fence began, shows the reverse sync past the fence moment. */
export function covers (reading: LagReading | undefined, fence: Fence, pollMs: number): boolean {
  return reading !== undefined && reading.seenAt > fence.at && caughtUpTo(reading, pollMs) >= fence.at
}

export interface WayBackVerdict {
  mode: WayBackMode
  /** A rollback now would lose no write. */
  safe: boolean
  /** Why, in words: "reverse sync 0.4 s behind", "no reading for 40 s", "way back: none". */
  why: string
  /** The reverse sync's lag as of now (reading, its age and one poll), seconds; null when unknown. */
  lagSeconds: number | null
  /** In reverse_sync: the lag is known and at most the maximum, so raises are allowed. */
  ready: boolean
}

/** The verdict on the way back at `now`. */
export function judgeWayBack (mode: WayBackMode, reading: LagReading | undefined, now: number, rules: { maxLagSeconds: number, pollMs: number }): WayBackVerdict {
  if (mode === 'dual_write') return { mode, safe: true, ready: true, why: 'dual write: legacy has every write', lagSeconds: reading === undefined ? null : lagAt(reading, now, rules.pollMs) }
  if (mode === 'none') return { mode, safe: false, ready: true, why: 'way back: none', lagSeconds: null }
  if (reading === undefined) return { mode, safe: false, ready: false, why: 'reverse lag unknown: no reading', lagSeconds: null }
  const lag = lagAt(reading, now, rules.pollMs)
  const age = (now - reading.seenAt) / 1000
  if (age > rules.maxLagSeconds) return { mode, safe: false, ready: false, why: `no reading for ${Math.round(age)} s`, lagSeconds: lag }
  if (lag > rules.maxLagSeconds) return { mode, safe: false, ready: false, why: `reverse sync ${seconds(reading.lag)} s behind (more than ${rules.maxLagSeconds} s)`, lagSeconds: lag }
  return { mode, safe: true, ready: true, why: `reverse sync ${seconds(reading.lag)} s behind`, lagSeconds: lag }
}

function lagAt (reading: LagReading, now: number, pollMs: number): number {
  return Math.max(0, Math.round((now - caughtUpTo(reading, pollMs)) / 10) / 100)
}

function seconds (value: number): string {
  return String(Math.round(value * 100) / 100)
}
