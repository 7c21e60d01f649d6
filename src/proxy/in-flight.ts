/** One request waiting for its answer to start; the list links through these fields (no allocation per request). */
export interface Waiting {
  /** performance.now() when it was first sent. */
  readonly sentAt: number
  prevWaiting: Waiting | undefined
  nextWaiting: Waiting | undefined
  /**
   * Called on each sweep while the request has waited at least the list's `overdueMs`, with how long it has
   * waited; returns true while it still needs watching, false to leave the list.
   */
  overdue: (waitedMs: number) => boolean
}

/**
 * The requests still waiting for an upstream answer, oldest first. A sweep every `tickMs` (only while the list is
 * not empty: an idle proxy runs no timer) tells those that have waited `overdueMs` or longer: the stuck-request
 * rule and the queue timeout act on them. Adding and removing are a few field writes on the hot path.
 */
export class WaitingList {
  readonly #overdueMs: number
  readonly #tickMs: number
  #head: Waiting | undefined
  #tail: Waiting | undefined
  #timer: NodeJS.Timeout | undefined
  #armed = false

  constructor (overdueMs: number) {
    this.#overdueMs = overdueMs
    this.#tickMs = Math.max(20, Math.min(250, Math.floor(overdueMs / 4)))
  }

  add (entry: Waiting): void {
    entry.prevWaiting = this.#tail
    entry.nextWaiting = undefined
    if (this.#tail === undefined) this.#head = entry
    else this.#tail.nextWaiting = entry
    this.#tail = entry
    if (!this.#armed) this.#arm()
  }

  remove (entry: Waiting): void {
    const { prevWaiting: prev, nextWaiting: next } = entry
    if (prev === undefined) {
      if (this.#head !== entry) return // not in the list
      this.#head = next
    } else {
      prev.nextWaiting = next
    }
    if (next === undefined) this.#tail = prev
    else next.prevWaiting = prev
    entry.prevWaiting = undefined
    entry.nextWaiting = undefined
  }

  /** Runs one sweep now (the timer does this every tickMs). */
  sweep (now = performance.now()): void {
    let entry = this.#head
    while (entry !== undefined) {
      const waited = now - entry.sentAt
      if (waited < this.#overdueMs) break // the rest are younger
      const next = entry.nextWaiting
      if (!entry.overdue(waited)) this.remove(entry)
      entry = next
    }
  }

  #arm (): void {
    this.#armed = true
    if (this.#timer === undefined) {
      this.#timer = setTimeout(this.#tick, this.#tickMs)
      this.#timer.unref()
    } else {
      this.#timer.refresh()
    }
  }

  readonly #tick = (): void => {
    this.#armed = false
    this.sweep()
    if (this.#head !== undefined) this.#arm()
  }
}
