import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import { every, Listeners, type Periodic } from '../background.ts'
import { isReady, type RedisClient } from './redis.ts'
import { dialOf, otherDialsOf, WRONG_TYPE, type InvalidValue, type RolloutStore, type SharedRollout, type Trip } from './store.ts'
import { initialSnapshot, nextSnapshot, rolledBack, sameSnapshot, type RolloutSnapshot } from './snapshot.ts'
import type { Fence } from './way-back.ts'

type RawDials = SharedRollout['raw']

/** A local rollback waiting to be written: the trip, and the command that writes it (true when it changed Redis). */
interface PendingRollback {
  trip: Trip
  /** The fence it engages on the moving cohort's writes (reverse_sync, or L3). */
  fence: Fence | undefined
  write: () => Promise<boolean>
}

export interface RolloutSyncOptions {
  initialPercent: number
  /** How often the percentage and state are polled (one MGET), so a plain `SET` is seen within this time. */
  pollIntervalMs: number
  /** How often everything (allow and deny sets, trip) is re-read even when nothing announced a change. */
  fullSyncIntervalMs: number
  /** How long start() waits for a first connection before serving the initial state. */
  startupWaitMs: number
  now?: () => number
  /** Counts reads that failed while Redis was connected. */
  failures?: { inc: () => void }
}

export interface RolloutSyncEvents {
  change: [next: RolloutSnapshot, previous: RolloutSnapshot]
  invalid: [value: InvalidValue]
  persisted: [trip: Trip]
  /** The raw percent or state moved since the previous read (by dbshift or by hand: the fleet audits the latter). */
  dial: [raw: RawDials, previous: RawDials]
  /** A change was announced on the events channel (any change made through dbshift, the schedule's included). */
  eventReceived: []
}

/**
 * Keeps the in-memory snapshot in step with Redis: a full read at start and on every (re)connect, a cheap poll,
 * and a pub/sub subscription for changes made through dbshift. Requests only ever read `current`; nothing here
 * is awaited on the request path. A local rollback applies at once and is written to Redis when it can be.
 */
export class RolloutSync extends EventEmitter<RolloutSyncEvents> {
  #current: RolloutSnapshot
  #lastSyncAt = 0
  #lastDial: string | undefined
  /** The write and route dials' raw text at the last full read. */
  #lastOtherDials: string | undefined
  #lastRaw: RawDials | undefined
  #lastFullSync = 0
  #pendingRollback: PendingRollback | undefined
  #failing = false
  /** Invalid values already reported, so each is logged and counted once, not on every poll. */
  readonly #reported = new Set<string>()
  #poller: Periodic | undefined
  readonly #listeners = new Listeners()
  #syncing: Promise<void> | undefined
  #closed = false

  readonly #store: RolloutStore
  readonly #redis: RedisClient
  readonly #subscriber: RedisClient
  readonly #options: RolloutSyncOptions
  readonly #log: Logger
  readonly #now: () => number

  constructor (store: RolloutStore, redis: RedisClient, subscriber: RedisClient, options: RolloutSyncOptions, log: Logger) {
    super()
    this.#store = store
    this.#redis = redis
    this.#subscriber = subscriber
    this.#options = options
    this.#log = log
    this.#now = options.now ?? Date.now
    this.#current = initialSnapshot(options.initialPercent)
  }

  /** The snapshot in force: what routing reads. */
  get current (): RolloutSnapshot {
    return this.#current
  }

  /** When this instance last read Redis successfully (ms since epoch; 0 = never). */
  get lastSyncAt (): number {
    return this.#lastSyncAt
  }

  /** True while a local rollback waits to be written to Redis. */
  get rollbackPending (): boolean {
    return this.#pendingRollback !== undefined
  }

  /**
   * Starts following Redis. Resolves after the first read or at once when Redis is unreachable: a cold start
   * without Redis serves the configured initial state and catches up in the background.
   */
  async start (): Promise<void> {
    const onReady = (): void => { this.refresh().catch((err: unknown) => { this.#failed(err) }) }
    // Subscribing is ours, on every (re)connect, with its error handled: ioredis's own autoResubscribe leaves a
    // rejected promise unhandled when Redis drops again during the re-subscribe, which would end the process.
    const subscribe = (): void => {
      this.#subscriber.subscribe(this.#store.keys.events).catch((err: Error) => {
        this.#log.warn({ err }, 'subscribing to rollout events failed; will retry on reconnect')
      })
    }
    this.#listeners.on(this.#redis, 'ready', onReady)
    this.#listeners.on(this.#subscriber, 'ready', () => {
      subscribe()
      onReady()
    })
    this.#listeners.on(this.#subscriber, 'message', (channel: string) => {
      if (channel !== this.#store.keys.events) return
      onReady()
      this.emit('eventReceived')
    })
    if (isReady(this.#subscriber)) subscribe()
    this.#poller = every('the rollout poll', async () => { await this.#poll() }, {
      intervalMs: this.#options.pollIntervalMs,
      log: this.#log,
      onError: (err) => { this.#failed(err) }
    })
    if (!isReady(this.#redis)) await this.#firstConnection()
    await this.refresh().catch((err: unknown) => { this.#failed(err) })
  }

  /**
   * A read that failed. Redis away is reported by the connection's own events; a Redis that is connected and
   * still fails (slow, refusing commands) is said once per streak, not hidden.
   */
  #failed (err: unknown): void {
    if (!isReady(this.#redis) || this.#closed) {
      this.#log.debug({ err }, 'reading the rollout failed while Redis is away')
      return
    }
    this.#options.failures?.inc()
    if (!this.#failing) this.#log.warn({ err }, 'reading the rollout from Redis failed although it is connected; routing on the last valid state and retrying')
    this.#failing = true
  }

  /** Waits (bounded) for the connection being made at start-up, so a healthy Redis is read before serving. */
  async #firstConnection (): Promise<void> {
    let timer: NodeJS.Timeout | undefined
    let onReady = (): void => {}
    await new Promise<void>((resolve) => {
      onReady = resolve
      this.#redis.once('ready', onReady)
      timer = setTimeout(resolve, this.#options.startupWaitMs)
    })
    clearTimeout(timer)
    this.#redis.off('ready', onReady)
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#listeners.removeAll()
    await this.#poller?.stop()
    await this.#syncing?.catch((err: unknown) => { this.#log.debug({ err }, 'the last rollout read failed while closing') })
  }

  /** Reads everything now (and writes a pending rollback first). Concurrent calls share one read. */
  async refresh (): Promise<void> {
    if (this.#syncing !== undefined) return await this.#syncing
    this.#syncing = this.#fullSync().finally(() => { this.#syncing = undefined })
    return await this.#syncing
  }

  /**
   * Routes everyone to legacy on this instance now, then writes the rollback to Redis (at once if it can,
   * else on every poll until it succeeds). Returns true when Redis already has it.
   */
  async rollbackLocally (trip: Trip, write: () => Promise<boolean>, fence?: Fence): Promise<boolean> {
    this.#pendingRollback = { trip, fence, write }
    this.#apply(rolledBack(this.#current, trip, fence))
    try {
      await this.refresh()
      // A read already in flight began before this rollback was queued and did not write it: one more does.
      if (this.#pendingRollback !== undefined) await this.refresh()
    } catch (err) {
      this.#failed(err)
    }
    return this.#pendingRollback === undefined
  }

  async #fullSync (): Promise<void> {
    if (this.#closed || !isReady(this.#redis)) throw new Error('Redis is not connected')
    const pending = this.#pendingRollback
    if (pending !== undefined) {
      // A Redis that refuses the write (ACL, full memory) is still read: the rollback stays pending and in force.
      const written = await pending.write().then(() => true, (err: unknown) => {
        this.#log.debug({ err }, 'writing the pending rollback failed; it stays in force here and is tried on the next read')
        return false
      })
      if (written) {
        if (this.#pendingRollback === pending) this.#pendingRollback = undefined
        this.emit('persisted', pending.trip)
      }
    }
    const shared = await this.#store.read()
    this.#failing = false
    this.#lastSyncAt = this.#now()
    this.#lastFullSync = this.#lastSyncAt
    this.#report(shared.invalid)
    const k = this.#store.keys
    const raw = shared.raw
    const dial = dialOf(raw.percent, raw.state)
    const previousRaw = this.#lastRaw
    const previousOthers = this.#lastOtherDials
    this.#lastDial = dial
    this.#lastOtherDials = shared.otherDials
    this.#lastRaw = raw
    if (previousRaw !== undefined && (dialOf(previousRaw.percent, previousRaw.state) !== dial || previousOthers !== shared.otherDials)) this.emit('dial', raw, previousRaw)
    // A set key of the wrong type is garbage, not an empty set: keep the last valid members.
    const wrongType = (key: string): boolean => shared.invalid.some((v) => v.key === key && v.value === WRONG_TYPE)
    if (wrongType(k.allow)) shared.allow = [...this.#current.allow]
    if (wrongType(k.deny)) shared.deny = [...this.#current.deny]
    let next = nextSnapshot(this.#current, shared)
    const stillPending = this.#pendingRollback as typeof pending
    if (stillPending !== undefined) next = rolledBack(next, stillPending.trip, stillPending.fence)
    this.#apply(next)
  }

  /** One MGET of the dials (percent, state, the write and route dials); a full read when it moved or when the full-sync interval is up. */
  async #poll (): Promise<void> {
    if (this.#pendingRollback !== undefined || this.#now() - this.#lastFullSync >= this.#options.fullSyncIntervalMs) {
      return await this.refresh()
    }
    if (!isReady(this.#redis)) return
    const k = this.#store.keys
    const [percent, state, ...others] = await this.#redis.mget(k.percent, k.state, ...this.#store.otherDialKeys)
    this.#lastSyncAt = this.#now()
    if (dialOf(percent, state) !== this.#lastDial || otherDialsOf(others) !== this.#lastOtherDials) await this.refresh()
  }

  #apply (next: RolloutSnapshot): void {
    const previous = this.#current
    if (sameSnapshot(previous, next)) return
    this.#current = next
    this.emit('change', next, previous)
  }

  #report (invalid: InvalidValue[]): void {
    const seen = new Set<string>()
    for (const value of invalid) {
      const id = `${value.key}\n${value.value}`
      seen.add(id)
      if (this.#reported.has(id)) continue
      this.#reported.add(id)
      this.emit('invalid', value)
    }
    for (const id of this.#reported) if (!seen.has(id)) this.#reported.delete(id)
  }
}
