import type { RedisClient } from './redis.ts'
import type { RolloutKeys } from './keys.ts'
import { decodeSchedule, type Schedule } from './schedule.ts'

/** Reads the ramp schedule from Redis. Changes to it go through the command layer (src/control/). */
export class ScheduleStore {
  readonly keys: RolloutKeys
  readonly #redis: RedisClient

  constructor (redis: RedisClient, keys: RolloutKeys) {
    this.#redis = redis
    this.keys = keys
  }

  /** The schedule and its raw text (the compare-and-set token of every write). */
  async read (): Promise<{ schedule: Schedule | undefined, raw: string }> {
    const raw = await this.#redis.get(this.keys.schedule) ?? ''
    return { schedule: decodeSchedule(raw), raw }
  }
}
