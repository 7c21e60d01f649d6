import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { ServerResponse } from 'node:http'
import { test, type TestContext } from 'node:test'
import type { L1Evaluation } from '../src/guards/l1-error-rate.ts'
import { getAs, nextGuardEvent, startProxy, startRedis, startUpstream, testConfig, type TestProxy, type TestRedis, untilRollout } from './helpers.ts'

/** A rollout name of this file's own: its keys cannot meet any other test's. */
const ROLLOUT = 'guard-l1'

/** Short windows so that a test sees a whole decision in a second or two. */
const L1 = { fastWindowMs: 2_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 60_000, minRequests: 100, errorRate: 0.05, evaluateIntervalMs: 100 }

interface Fleet {
  redis: TestRedis
  proxies: TestProxy[]
  legacy: { fail: boolean }
  migrated: { fail: boolean, served: number, failEvery?: (n: number) => boolean }
}

/** Redis, two upstreams whose failures the test controls, and `size` instances at 100%. */
async function fleet (t: TestContext, size: number, l1: Record<string, unknown> = {}, percent = 100): Promise<Fleet> {
  const redis = await startRedis(t)
  const legacyState = { fail: false }
  const migratedState: Fleet['migrated'] = { fail: false, served: 0 }
  const answer = (name: string, fail: boolean) => (res: ServerResponse): void => {
    res.writeHead(fail ? 500 : 200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ servedBy: name }))
  }
  const legacy = await startUpstream(t, 'legacy', (req, res) => { req.resume(); answer('legacy', legacyState.fail)(res) })
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    const n = migratedState.served++
    answer('migrated', migratedState.fail || migratedState.failEvery?.(n) === true)(res)
  })
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, String(percent))
  const proxies: TestProxy[] = []
  for (let i = 0; i < size; i++) {
    const config = testConfig(redis.url, legacy.url, migrated.url, { instanceId: `i${i}`, rollout: { name: ROLLOUT }, guards: { l1: { ...L1, ...l1 }, l2: { enabled: false } } })
    proxies.push(await startProxy(t, config))
  }
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.percent === percent)))
  return { redis, proxies, legacy: legacyState, migrated: migratedState }
}

const fleetSaw = (requests: number) => (e: L1Evaluation): boolean => e.source === 'fleet' && e.totals.long.migrated.requests >= requests

test('a hard failure of migrated trips L1 once, and all three instances serve legacy within 1 s of the trip', async (t) => {
  const { redis, proxies, migrated } = await fleet(t, 3)
  const switched = proxies.map(async (p) => {
    await untilRollout(p.app, (s) => s.rolledBack, 10_000)
    return Date.now()
  })
  const tripped = Promise.race(proxies.map(async (p) => await nextGuardEvent(p.app, 'trip', (_trip, outcome) => outcome !== 'joined', 10_000)))

  migrated.fail = true
  // Users spread over the three instances, as behind a load balancer.
  let sent = 0
  while (!proxies.every((p) => p.app.sync.current.rolledBack) && sent < 500) {
    await Promise.all(proxies.map(async (p, i) => await getAs(p.url, `user-${sent}-${i}`)))
    sent += proxies.length
  }
  const [trip] = await tripped
  const tripAt = Date.parse(trip.at)
  const lags = (await Promise.all(switched)).map((at) => at - tripAt)
  t.diagnostic(`tripped by ${trip.by} after ${sent} requests: ${trip.reason}; instances switched ${lags.join(', ')} ms after the trip`)
  for (const lag of lags) assert.ok(lag <= 1_000, `an instance switched ${lag} ms after the trip`)

  for (const [i, p] of proxies.entries()) {
    const answer = await getAs(p.url, `after-${i}`)
    assert.equal(answer.status, 200)
    assert.equal(answer.version, 'legacy')
  }
  assert.equal(await redis.client.get(`dbshift:{${ROLLOUT}}:state`), 'rolled_back')
  const stored = await redis.client.hgetall(`dbshift:{${ROLLOUT}}:trip`)
  assert.equal(stored.level, 'L1')
  assert.equal(stored.by, trip.by)
  assert.match(stored.reason ?? '', /migrated error rate/)
  const rollbacks = (await redis.client.xrange(`dbshift:{${ROLLOUT}}:audit`, '-', '+')).filter(([, fields]) => fields.includes('rollback'))
  assert.equal(rollbacks.length, 1, 'one rollback in the audit stream')
  let trips = 0
  for (const p of proxies) trips += (await p.app.metrics.guardTrips.get()).values.find((v) => v.labels.level === 'L1')?.value ?? 0
  assert.equal(trips, 1, 'dbshift_guard_trips_total{level="L1"} counts the one trip once across the fleet')
  assert.ok(proxies.some((p) => p.logs.some((line) => String(line.msg).startsWith('L1 guard tripped'))), 'the trip is logged')
})

test('three instances each below the minimum add up to a fleet decision', async (t) => {
  const { proxies, migrated } = await fleet(t, 3)
  const decided = Promise.race(proxies.map(async (p) => await nextGuardEvent(p.app, 'evaluated', (e) => e.verdict.trip)))
  migrated.fail = true
  // 8 failing requests on each instance: none has the 20 the fast window needs; the fleet has 24.
  await Promise.all(proxies.map(async (p, i) => {
    for (let n = 0; n < 8; n++) await getAs(p.url, `u${i}-${n}`)
  }))
  for (const p of proxies) assert.ok(p.app.traffic.totals('migrated', 60_000).requests <= 8)
  const [evaluation] = await decided
  assert.equal(evaluation.source, 'fleet')
  assert.ok(evaluation.totals.fast.migrated.requests >= 20, JSON.stringify(evaluation.totals.fast))
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.rolledBack)))
})

test('a 3% error rate never trips', async (t) => {
  const { proxies, migrated } = await fleet(t, 1)
  const proxy = proxies[0] as TestProxy
  migrated.failEvery = (n) => n % 33 === 32 // spread out: 3% at every point in time, not a burst of 6% now and then
  for (let n = 0; n < 300; n++) await getAs(proxy.url, `user-${n}`)
  assert.equal(migrated.served, 300)
  const [evaluation] = await nextGuardEvent(proxy.app, 'evaluated', fleetSaw(300))
  assert.deepEqual(evaluation.totals.long.migrated, { requests: 300, errors: 9 })
  assert.equal(evaluation.verdict.trip, false, evaluation.verdict.reason)
  assert.equal(proxy.app.sync.current.rolledBack, false)
  assert.equal((await getAs(proxy.url, 'someone')).version, 'migrated')
})

test('100% errors on fewer than the minimum requests never trips', async (t) => {
  const { proxies, migrated } = await fleet(t, 1)
  const proxy = proxies[0] as TestProxy
  migrated.fail = true
  for (let n = 0; n < 19; n++) assert.equal((await getAs(proxy.url, `user-${n}`)).status, 500)
  const [evaluation] = await nextGuardEvent(proxy.app, 'evaluated', fleetSaw(19))
  assert.deepEqual(evaluation.totals.fast.migrated, { requests: 19, errors: 19 })
  assert.equal(evaluation.verdict.trip, false)
  assert.match(evaluation.verdict.reason, /19 of the 20 requests needed/)
  assert.equal(proxy.app.sync.current.rolledBack, false)
})

test('comparison mode: a failure both versions share does not trip; then legacy recovers and it does', async (t) => {
  const { proxies, legacy, migrated } = await fleet(t, 1, { compareWithLegacy: true }, 50)
  const proxy = proxies[0] as TestProxy
  legacy.fail = true
  migrated.fail = true
  for (let n = 0; n < 80; n++) assert.equal((await getAs(proxy.url, `user-${n}`)).status, 500)
  const [shared] = await nextGuardEvent(proxy.app, 'evaluated', (e) => e.source === 'fleet' && e.totals.fast.migrated.requests + e.totals.fast.legacy.requests >= 80)
  assert.ok(shared.totals.fast.migrated.requests >= 20 && shared.totals.fast.legacy.requests >= 20, JSON.stringify(shared.totals.fast))
  assert.equal(shared.verdict.trip, false)
  assert.match(shared.verdict.reason, /legacy fails too/)
  assert.equal(proxy.app.sync.current.rolledBack, false)

  // Only migrated fails now: that is the migration's fault.
  legacy.fail = false
  const tripped = nextGuardEvent(proxy.app, 'trip')
  for (let n = 0; !proxy.app.sync.current.rolledBack && n < 400; n++) await getAs(proxy.url, `later-${n}`)
  const [trip] = await tripped
  assert.equal(trip.level, 'L1')
})

test('a trip while Redis is down protects users at once, and is written to Redis when it returns', async (t) => {
  const { redis, proxies, migrated } = await fleet(t, 1)
  const proxy = proxies[0] as TestProxy
  // Not events.once: it would reject on the client's 'error' event.
  const lost = new Promise<void>((resolve) => proxy.app.redis.once('close', () => resolve()))
  await redis.stop()
  await lost

  migrated.fail = true
  const tripped = nextGuardEvent(proxy.app, 'trip')
  let failed = 0
  while (!proxy.app.sync.current.rolledBack && failed < 200) {
    if ((await getAs(proxy.url, `user-${failed}`)).status === 500) failed++
  }
  const [trip, outcome] = await tripped
  assert.equal(outcome, 'pending')
  assert.equal(proxy.app.guards.status().l1 !== undefined, true)
  const answer = await getAs(proxy.url, 'user-0')
  assert.equal(answer.version, 'legacy', 'users are on legacy while Redis is still down')
  assert.equal(answer.status, 200)

  const persisted = once(proxy.app.sync, 'persisted')
  await redis.start()
  await persisted
  assert.equal(await redis.client.get(`dbshift:{${ROLLOUT}}:state`), 'rolled_back')
  const stored = await redis.client.hgetall(`dbshift:{${ROLLOUT}}:trip`)
  assert.deepEqual({ level: stored.level, by: stored.by, at: stored.at }, { level: 'L1', by: 'i0', at: trip.at })
  assert.ok(failed >= 20 && failed < 200, `${failed} users saw the failure before the local trip`)
})

test('a resume re-arms L1, and the failures that caused the trip do not trip it again', async (t) => {
  const { redis, proxies, migrated } = await fleet(t, 1, { minRequests: 20 })
  const proxy = proxies[0] as TestProxy
  migrated.fail = true
  for (let n = 0; !proxy.app.sync.current.rolledBack && n < 200; n++) await getAs(proxy.url, `user-${n}`)
  assert.equal(proxy.app.sync.current.rolledBack, true)
  assert.equal((await getAs(proxy.url, 'user-1')).version, 'legacy', 'it stays rolled back: nothing re-arms it but an operator')

  migrated.fail = false
  assert.equal((await proxy.app.control.resume({ by: 'on-call', source: 'cli' }, 'fixed the index')).status, 'ok')
  await untilRollout(proxy.app, (s) => !s.rolledBack)
  assert.equal(await redis.client.exists(`dbshift:{${ROLLOUT}}:trip`), 0)
  // Healthy traffic after the resume; the 60 s window still holds the failures from before it.
  const healthy = nextGuardEvent(proxy.app, 'evaluated', (e) => e.source === 'fleet' && e.totals.fast.migrated.requests >= 20, 8_000)
  let sent = 0
  const control = { stop: false }
  const traffic = (async () => {
    while (!control.stop && sent < 2_000) {
      assert.equal((await getAs(proxy.url, `after-${sent++}`)).version, 'migrated')
    }
  })()
  const [evaluation] = await healthy.finally(() => { control.stop = true })
  await traffic
  assert.equal(evaluation.totals.long.migrated.errors, 0, 'only what came after the resume counts')
  assert.equal(evaluation.verdict.trip, false)
  assert.equal(proxy.app.sync.current.rolledBack, false)
})

// Regression: with these windows both resolve to the same slot width and once shared their Redis keys, so
// every request was counted twice and 12 errors looked like 24.
test('two windows with the same slot width count each request once', async (t) => {
  const { proxies, migrated } = await fleet(t, 1, { fastWindowMs: 30_000, windowMs: 60_000, fastMinRequests: 20, minRequests: 20 })
  const proxy = proxies[0] as TestProxy
  migrated.fail = true
  for (let n = 0; n < 12; n++) assert.equal((await getAs(proxy.url, `user-${n}`)).status, 500)
  const [evaluation] = await nextGuardEvent(proxy.app, 'evaluated', fleetSaw(12))
  assert.deepEqual(evaluation.totals.fast.migrated, { requests: 12, errors: 12 })
  assert.deepEqual(evaluation.totals.long.migrated, { requests: 12, errors: 12 })
  assert.equal(evaluation.verdict.trip, false)
  assert.equal(proxy.app.sync.current.rolledBack, false)
})
