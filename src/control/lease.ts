import type { Scripts } from './scripts.ts'

/**
 * A lease in Redis that at most one holder has at a time. It expires unless renewed, so when the holder dies
 * (no graceful release), another one takes it within `ttlMs`.
 */
export class Lease {
  readonly #scripts: Scripts
  readonly #key: string
  readonly #holder: string
  readonly #ttlMs: number

  constructor (scripts: Scripts, key: string, holder: string, ttlMs: number) {
    this.#scripts = scripts
    this.#key = key
    this.#holder = holder
    this.#ttlMs = ttlMs
  }

  /** Takes the lease, or renews it when this holder has it. False when someone else holds it. */
  async acquire (): Promise<boolean> {
    return await this.#scripts.run('dbshiftLeaseAcquire', [this.#key], [this.#holder, this.#ttlMs]) === 1
  }

  /** Gives the lease up at once (a graceful stop), so the next holder need not wait for it to expire. */
  async release (): Promise<void> {
    await this.#scripts.run('dbshiftLeaseRelease', [this.#key], [this.#holder])
  }
}
