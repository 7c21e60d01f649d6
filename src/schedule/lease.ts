import type { RedisClient } from '../rollout/redis.ts'

const ACQUIRE = `
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`

/**
 * A lease in Redis that at most one holder has at a time. It expires unless renewed, so when the holder dies
 * (no graceful release), another one takes it within `ttlMs`.
 */
export class Lease {
  readonly #redis: RedisClient
  readonly #key: string
  readonly #holder: string
  readonly #ttlMs: number

  constructor (redis: RedisClient, key: string, holder: string, ttlMs: number) {
    this.#redis = redis
    this.#key = key
    this.#holder = holder
    this.#ttlMs = ttlMs
  }

  /** Takes the lease, or renews it when this holder has it. False when someone else holds it. */
  async acquire (): Promise<boolean> {
    return await this.#redis.eval(ACQUIRE, 1, this.#key, this.#holder, this.#ttlMs) === 1
  }

  /** Gives the lease up at once (a graceful stop), so the next holder need not wait for it to expire. */
  async release (): Promise<void> {
    await this.#redis.eval(RELEASE, 1, this.#key, this.#holder)
  }

  async holder (): Promise<string | null> {
    return await this.#redis.get(this.#key)
  }
}
