import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Agent, request } from 'undici'
import type { App } from '../src/app.ts'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestRedis } from './helpers.ts'

const USERS = Array.from({ length: 200 }, (_, i) => `user-${i}`)

/**
 * Continuous traffic through the proxy from a fixed set of users: counts every request, every failure, every
 * answer from a version other than the one the user had before the fault, and the slowest answer.
 */
class Traffic {
  sent = 0
  failed: string[] = []
  moved: string[] = []
  slowestMs = 0
  readonly expected = new Map<string, string>()
  readonly #agent = new Agent({ connections: 8 })
  #loops: Array<Promise<void>> = []
  #stopped = false
  #next = 0

  constructor (readonly url: string) {}

  /** One pass over every user, remembering the version each is served by. */
  async learn (): Promise<void> {
    this.expected.clear()
    for (const user of USERS) this.expected.set(user, await this.#send(user, false))
    this.sent = 0
  }

  start (concurrency = 4): void {
    this.#stopped = false
    this.#loops = Array.from({ length: concurrency }, async () => {
      while (!this.#stopped) await this.#send(USERS[this.#next++ % USERS.length] as string, true)
    })
  }

  async stop (): Promise<{ sent: number, failed: number, moved: number }> {
    this.#stopped = true
    await Promise.all(this.#loops)
    return { sent: this.sent, failed: this.failed.length, moved: this.moved.length }
  }

  async close (): Promise<void> {
    this.#stopped = true
    await Promise.all(this.#loops)
    await this.#agent.close()
  }

  async #send (user: string, check: boolean): Promise<string> {
    const started = performance.now()
    this.sent++
    try {
      const res = await request(`${this.url}/orders`, { dispatcher: this.#agent, headers: { 'x-user-id': user } })
      await res.body.dump()
      const version = String(res.headers['x-dbshift-version'])
      if (res.statusCode !== 200) this.failed.push(`${user}: ${res.statusCode}`)
      else if (check && this.expected.get(user) !== version) this.moved.push(`${user}: ${this.expected.get(user) ?? '?'} → ${version}`)
      return version
    } catch (err) {
      this.failed.push(`${user}: ${(err as Error).message}`)
      return ''
    } finally {
      this.slowestMs = Math.max(this.slowestMs, performance.now() - started)
    }
  }
}

interface Rig { redis: TestRedis, app: App, url: string, traffic: Traffic }

/** Redis with the rollout at 50%, a proxy following it, and traffic that has learnt who goes where. */
async function rig (t: TestContext, redisArgs: string[] = []): Promise<Rig> {
  const redis = await startRedis(t, redisArgs)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  await redis.client.set('dbshift:{default}:percent', '50')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  await untilRollout(proxy.app, (s) => s.percent === 50)
  const traffic = new Traffic(proxy.url)
  t.after(async () => await traffic.close())
  await traffic.learn()
  assert.equal(new Set(traffic.expected.values()).size, 2, 'both versions serve someone at 50%')
  return { redis, app: proxy.app, url: proxy.url, traffic }
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** Polls an external condition until it holds, or fails at the deadline. */
async function until (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await sleep(25)
  }
}

/** Every figure the README's failure table quotes comes from here. */
function report (fault: string, figures: { sent: number, failed: number, moved: number }, slowestMs: number): void {
  process.stdout.write(`# fault "${fault}": sent ${figures.sent}, failed ${figures.failed}, moved ${figures.moved}, slowest ${Math.round(slowestMs)} ms\n`)
}

const redisUp = async (app: App): Promise<number> => (await app.metrics.redisUp.get()).values[0]?.value ?? -1
const subscribers = async (redis: TestRedis): Promise<number> =>
  Number((await redis.client.pubsub('NUMSUB', 'dbshift:{default}:events') as [string, number])[1])

test('Redis stopped and restarted under traffic: no failed request, routing unchanged, then reconnects and catches up', async (t) => {
  // Redis keeps its data across the restart (append-only file, synced on every write), as in production.
  const dir = await mkdtemp(join(tmpdir(), 'dbshift-fault-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const { redis, app, traffic } = await rig(t, ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir])
  traffic.start()
  await sleep(300)
  await redis.stop()
  await until('dbshift_redis_up drops to 0', async () => await redisUp(app) === 0)
  await sleep(1_500) // a second and a half of traffic with no Redis at all
  assert.equal(app.sync.current.percent, 50, 'the last valid state stays in force')
  await redis.start()
  await until('dbshift_redis_up back to 1', async () => await redisUp(app) === 1)
  await until('the events subscription is restored', async () => await subscribers(redis) >= 1)
  const figures = await traffic.stop()
  report('Redis stopped for 1.5 s, then restarted', figures, traffic.slowestMs)
  assert.deepEqual(traffic.failed, [])
  assert.deepEqual(traffic.moved, [])

  // Caught up: a plain SET and a change announced on the channel both arrive.
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(app, (s) => s.percent === 100)
  await app.control.setPercent(20, { by: 'test', source: 'cli' })
  await untilRollout(app, (s) => s.percent === 20, 1_000)
})

test('Redis paused (CLIENT PAUSE) and asleep (DEBUG SLEEP): requests never wait on it', async (t) => {
  const { redis, app, traffic } = await rig(t, ['--enable-debug-command', 'yes'])
  traffic.start()
  await sleep(300)
  await redis.client.client('PAUSE', 2_000, 'ALL')
  await sleep(2_500)
  const paused = await traffic.stop()
  report('Redis paused 2 s (CLIENT PAUSE ALL)', paused, traffic.slowestMs)
  assert.deepEqual(traffic.failed, [])
  assert.deepEqual(traffic.moved, [])
  assert.ok(traffic.slowestMs < 1_500, `a request took ${Math.round(traffic.slowestMs)} ms while Redis was paused for 2 s`)

  traffic.slowestMs = 0
  const before = traffic.sent
  traffic.start()
  const sleeper = startRedisSleeper(redis)
  await sleeper.sleep(2) // the whole server blocks for 2 s
  const asleep = await traffic.stop()
  report('Redis blocked 2 s (DEBUG SLEEP 2)', { ...asleep, sent: asleep.sent - before }, traffic.slowestMs)
  await sleeper.close()
  assert.deepEqual(traffic.failed, [])
  assert.deepEqual(traffic.moved, [])
  assert.ok(traffic.slowestMs < 1_500, `a request took ${Math.round(traffic.slowestMs)} ms while Redis slept for 2 s`)

  await redis.client.set('dbshift:{default}:percent', '70')
  await untilRollout(app, (s) => s.percent === 70)
})

test('a slow Redis (every command delayed) slows nothing on the request path', async (t) => {
  const { redis, app, traffic } = await rig(t, ['--enable-debug-command', 'yes'])
  traffic.start()
  const sleeper = startRedisSleeper(redis)
  // For three seconds Redis answers each command only after a 0.3 s stall.
  const until3s = Date.now() + 3_000
  while (Date.now() < until3s) await sleeper.sleep(0.3)
  await sleeper.close()
  const figures = await traffic.stop()
  report('Redis stalling 0.3 s per command for 3 s', figures, traffic.slowestMs)
  assert.deepEqual(traffic.failed, [])
  assert.deepEqual(traffic.moved, [])
  assert.ok(traffic.slowestMs < 1_000, `a request took ${Math.round(traffic.slowestMs)} ms`)
  await redis.client.set('dbshift:{default}:percent', '10')
  await untilRollout(app, (s) => s.percent === 10)
})

test('Redis flushed under traffic: falls back to the configured initial state, never fails a request', async (t) => {
  const { redis, app, traffic } = await rig(t)
  traffic.start()
  await sleep(200)
  await redis.client.flushall()
  // A missing key means the configured initial percentage (0): everyone moves toward legacy, the safe side.
  await untilRollout(app, (s) => s.percent === 0)
  const figures = await traffic.stop()
  report('Redis flushed (FLUSHALL)', figures, traffic.slowestMs)
  assert.deepEqual(traffic.failed, [])
  assert.ok(traffic.moved.every((line) => line.endsWith('migrated → legacy')), 'only moves toward legacy')
})

test('garbage in every key under traffic: the last valid state stays in force, each value is counted', async (t) => {
  const { redis, app, traffic } = await rig(t)
  const k = (name: string): string => `dbshift:{default}:${name}`
  await redis.client.sadd(k('allow'), 'vip') // remembered as the last valid allow-set
  await redis.client.sadd(k('deny'), 'blocked')
  await untilRollout(app, (s) => s.allow.has('vip') && s.deny.has('blocked'), 3_000)
  const decide = (user: string): string => app.router.decide(app.sync.current, user).version
  assert.equal(decide('vip'), 'migrated')
  traffic.start()
  await sleep(200)
  await redis.client.multi()
    .set(k('percent'), 'abc')
    .set(k('state'), 'maybe')
    .del(k('trip')).set(k('trip'), 'not a hash')
    .del(k('allow')).set(k('allow'), 'not a set')
    .del(k('deny')).hset(k('deny'), 'not', 'a set')
    .exec()
  await until('each invalid value is counted', async () => (await app.metrics.configErrors.get()).values[0]?.value === 5)
  await sleep(1_000) // a few polls and a full re-read of the garbage
  const figures = await traffic.stop()
  report('garbage in every key', figures, traffic.slowestMs)
  assert.deepEqual(traffic.failed, [])
  assert.deepEqual(traffic.moved, [])
  assert.equal(app.sync.current.percent, 50)
  assert.equal(app.sync.current.state, 'active')
  assert.equal(decide('vip'), 'migrated', 'the allow-set is kept, not emptied')
  assert.equal(decide('blocked'), 'legacy', 'the deny-set is kept, not emptied')

  await redis.client.set(k('percent'), '100')
  await untilRollout(app, (s) => s.percent === 100)
})

/** A connection of its own that blocks the Redis server with DEBUG SLEEP. */
function startRedisSleeper (redis: TestRedis): { sleep: (seconds: number) => Promise<void>, close: () => Promise<void> } {
  const client = redis.client.duplicate()
  client.on('error', () => {})
  return {
    sleep: async (seconds) => { await client.call('DEBUG', 'SLEEP', String(seconds)) },
    close: async () => { client.disconnect() }
  }
}
