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
}

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
  }

  record (version: Version, isError: boolean): void {
    const slot = Math.floor(this.#now() / this.slotMs)
    const i = this.#cell(version, slot)
    this.#requests[version][i]++
    this.#undrainedRequests[version][i]++
    if (isError) {
      this.#errors[version][i]++
      this.#undrainedErrors[version][i]++
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
        out.push({ version, slot: ids[i] as number, requests: requests[i] as number, errors: errors[i] as number })
        requests[i] = 0
        errors[i] = 0
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
    }
    return i
  }
}
