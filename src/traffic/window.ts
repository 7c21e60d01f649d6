import { VERSIONS, type Version } from '../routing/decide.ts'

export interface Counts {
  requests: number
  errors: number
}

/** Counts recorded since the last drain, per version and time slot: what an instance shares with the fleet. */
export interface SlotCounts extends Counts {
  version: Version
  /** floor(time / slotMs): the slot the counts belong to. */
  slot: number
  /** Hashes of the distinct user keys among this slot's errors (at most MAX_USERS_PER_SLOT). */
  failingUsers: string[]
}

/** Distinct failing users kept per slot: enough for any sensible guards.l1.minUsers, bounded against key floods. */
export const MAX_USERS_PER_SLOT = 256

/** Upper bounds (seconds) of the latency buckets the p99 rule reads; the last bucket is everything above. */
export const LATENCY_BOUNDS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30]
const LATENCY_CELLS = LATENCY_BOUNDS.length + 1

export interface TrafficWindowOptions {
  /** Width of one slot. */
  slotMs?: number
  /** How many slots are kept: slotMs × slots is the longest window that can be asked for. */
  slots?: number
  now?: () => number
}

/**
 * Sliding per-version counts of requests and errors in a ring of time slots. The proxy records each answer
 * here (two array increments); the guards and /status read from here. Pure: no I/O, an injected clock.
 */
export class TrafficWindow {
  readonly slotMs: number
  readonly #size: number
  readonly #now: () => number
  /** Per version: the slot number each ring cell holds, and its counts. */
  readonly #ids: Record<Version, Float64Array>
  readonly #requests: Record<Version, Float64Array>
  readonly #errors: Record<Version, Float64Array>
  readonly #undrainedRequests: Record<Version, Float64Array>
  readonly #undrainedErrors: Record<Version, Float64Array>
  /** Per version and ring cell: hashes of the user keys among the errors (created on the first error only). */
  readonly #users: Record<Version, Array<Set<string> | undefined>>
  readonly #undrainedUsers: Record<Version, Array<Set<string> | undefined>>
  /** Per version: LATENCY_CELLS counts per ring cell. */
  readonly #latency: Record<Version, Float64Array>

  constructor (options: TrafficWindowOptions = {}) {
    this.slotMs = options.slotMs ?? 1_000
    this.#size = options.slots ?? 600
    this.#now = options.now ?? Date.now
    const ring = (fill = 0): Record<Version, Float64Array> => ({
      legacy: new Float64Array(this.#size).fill(fill),
      migrated: new Float64Array(this.#size).fill(fill)
    })
    this.#ids = ring(-1)
    this.#requests = ring()
    this.#errors = ring()
    this.#undrainedRequests = ring()
    this.#undrainedErrors = ring()
    this.#users = { legacy: new Array(this.#size), migrated: new Array(this.#size) }
    this.#undrainedUsers = { legacy: new Array(this.#size), migrated: new Array(this.#size) }
    this.#latency = { legacy: new Float64Array(this.#size * LATENCY_CELLS), migrated: new Float64Array(this.#size * LATENCY_CELLS) }
  }

  /**
   * Counts one answered request; `user` (a user key, or the client address for an anonymous request) is kept, as
   * a hash, only for errors: a trip needs failures from several users.
   */
  record (version: Version, isError: boolean, user?: string): void {
    const slot = Math.floor(this.#now() / this.slotMs)
    const i = this.#cell(version, slot)
    this.#requests[version][i]++
    this.#undrainedRequests[version][i]++
    if (isError) {
      this.#errors[version][i]++
      this.#undrainedErrors[version][i]++
      if (user !== undefined) {
        const hash = userHash(user)
        addBounded(this.#users[version], i, hash)
        addBounded(this.#undrainedUsers[version], i, hash)
      }
    }
  }

  /** Counts one request's time to its answer, for the latency rule. Array increments only. */
  latency (version: Version, seconds: number): void {
    const i = this.#cell(version, Math.floor(this.#now() / this.slotMs))
    let b = 0
    while (b < LATENCY_BOUNDS.length && seconds > (LATENCY_BOUNDS[b] as number)) b++
    this.#latency[version][i * LATENCY_CELLS + b]++
  }

  /**
   * The `q` quantile (0.99 for p99) of one version's latencies over the last `windowMs`, as the upper bound of
   * the bucket it falls in (Infinity above the last bound), with how many latencies it was judged on.
   */
  quantile (version: Version, windowMs: number, q: number): { seconds: number, count: number } {
    const counts = new Float64Array(LATENCY_CELLS)
    let count = 0
    this.#eachSlot(version, windowMs, (i) => {
      for (let b = 0; b < LATENCY_CELLS; b++) {
        const n = this.#latency[version][i * LATENCY_CELLS + b] as number
        counts[b] = (counts[b] as number) + n
        count += n
      }
    })
    if (count === 0) return { seconds: 0, count }
    const rank = Math.ceil(q * count)
    let seen = 0
    for (let b = 0; b < LATENCY_CELLS; b++) {
      seen += counts[b] as number
      if (seen >= rank) return { seconds: LATENCY_BOUNDS[b] ?? Infinity, count }
    }
    return { seconds: Infinity, count }
  }

  /** How many distinct users (user keys, or addresses of anonymous clients) had errors over the last `windowMs`. */
  failingUsers (version: Version, windowMs: number): number {
    const union = new Set<string>()
    this.#eachSlot(version, windowMs, (i) => {
      for (const hash of this.#users[version][i] ?? []) union.add(hash)
    })
    return union.size
  }

  #eachSlot (version: Version, windowMs: number, visit: (i: number) => void): void {
    const current = Math.floor(this.#now() / this.slotMs)
    const span = Math.min(Math.ceil(windowMs / this.slotMs), this.#size)
    const ids = this.#ids[version]
    for (let slot = current - span + 1; slot <= current; slot++) {
      const i = slot % this.#size
      if (ids[i] === slot) visit(i)
    }
  }

  /** Requests and errors of one version over the last `windowMs` (rounded up to whole slots). */
  totals (version: Version, windowMs: number): Counts {
    const current = Math.floor(this.#now() / this.slotMs)
    const span = Math.min(Math.ceil(windowMs / this.slotMs), this.#size)
    const ids = this.#ids[version]
    let requests = 0
    let errors = 0
    for (let slot = current - span + 1; slot <= current; slot++) {
      const i = slot % this.#size
      if (ids[i] === slot) {
        requests += this.#requests[version][i] as number
        errors += this.#errors[version][i] as number
      }
    }
    return { requests, errors }
  }

  /** Counts recorded since the previous drain, then forgets them (the window itself keeps them). */
  drain (): SlotCounts[] {
    const out: SlotCounts[] = []
    for (const version of VERSIONS) {
      const ids = this.#ids[version]
      const requests = this.#undrainedRequests[version]
      const errors = this.#undrainedErrors[version]
      for (let i = 0; i < this.#size; i++) {
        if (requests[i] === 0 && errors[i] === 0) continue
        const users = this.#undrainedUsers[version][i]
        out.push({ version, slot: ids[i] as number, requests: requests[i] as number, errors: errors[i] as number, failingUsers: users === undefined ? [] : [...users] })
        requests[i] = 0
        errors[i] = 0
        this.#undrainedUsers[version][i] = undefined
      }
    }
    return out
  }

  #cell (version: Version, slot: number): number {
    const i = slot % this.#size
    const ids = this.#ids[version]
    if (ids[i] !== slot) {
      ids[i] = slot
      this.#requests[version][i] = 0
      this.#errors[version][i] = 0
      this.#undrainedRequests[version][i] = 0
      this.#undrainedErrors[version][i] = 0
      this.#users[version][i] = undefined
      this.#undrainedUsers[version][i] = undefined
      this.#latency[version].fill(0, i * LATENCY_CELLS, (i + 1) * LATENCY_CELLS)
    }
    return i
  }
}

function addBounded (cells: Array<Set<string> | undefined>, i: number, hash: string): void {
  let set = cells[i]
  if (set === undefined) {
    set = new Set()
    cells[i] = set
  }
  if (set.size < MAX_USERS_PER_SLOT) set.add(hash)
}

/** A short hash of a user key: what is counted and shared, never the key itself. FNV-1a, 32 bits, base 36. */
export function userHash (key: string): string {
  let h = 0x811c9dc5
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return (h >>> 0).toString(36)
}
