import assert from 'node:assert/strict'
import { test } from 'node:test'
import { resolveConfig } from '../src/config.ts'
import { judge } from '../src/guards/error-rate.ts'
import { FleetCounts, type FleetTotals } from '../src/guards/fleet-counts.ts'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { TrafficWindow } from '../src/traffic/window.ts'
import { startRedis } from './helpers.ts'

const defaults = resolveConfig({ pools: { legacy: ['http://127.0.0.1:1'], migrated: ['http://127.0.0.1:2'] } }).guards.l1

function totals (fast: [number, number, number?, number?], long: [number, number, number?, number?]): FleetTotals {
  const side = ([requests, errors, legacyRequests = 0, legacyErrors = 0]: [number, number, number?, number?]): FleetTotals['fast'] =>
    ({ migrated: { requests, errors }, legacy: { requests: legacyRequests, errors: legacyErrors } })
  return { fast: side(fast), long: side(long), failingUsers: { fast: 1_000, long: 1_000 } }
}

test('L1 defaults follow SPEC: > 5% over 5 min with 100 requests, ≥ 50% over 10 s with 20', () => {
  assert.equal(defaults.errorRate, 0.05)
  assert.equal(defaults.windowMs, 300_000)
  assert.equal(defaults.minRequests, 100)
  assert.equal(defaults.fastErrorRate, 0.5)
  assert.equal(defaults.fastWindowMs, 10_000)
  assert.equal(defaults.fastMinRequests, 20)
})

test('L1 verdicts: hard failures trip, low rates and small samples never do', () => {
  const cases: Array<{ name: string, totals: FleetTotals, trip: boolean, window?: string }> = [
    { name: 'hard failure, 20 of 20 in the fast window', totals: totals([20, 20], [20, 20]), trip: true, window: 'fast' },
    { name: 'exactly 50% of 20 in the fast window', totals: totals([20, 10], [20, 10]), trip: true, window: 'fast' },
    { name: '100% errors on 19 requests (below both minimums)', totals: totals([19, 19], [19, 19]), trip: false },
    { name: '3% over 5 minutes', totals: totals([40, 1], [1000, 30]), trip: false },
    { name: 'exactly 5% over 5 minutes (the limit is "above")', totals: totals([40, 2], [1000, 50]), trip: false },
    { name: '6% over 5 minutes', totals: totals([40, 3], [1000, 60]), trip: true, window: 'long' },
    { name: '100% on 99 requests over 5 minutes, few recent', totals: totals([10, 10], [99, 99]), trip: false },
    { name: 'nothing at all', totals: totals([0, 0], [0, 0]), trip: false }
  ]
  for (const c of cases) {
    const verdict = judge(c.totals, defaults)
    assert.equal(verdict.trip, c.trip, `${c.name}: ${verdict.reason}`)
    assert.equal(verdict.window, c.window, c.name)
  }
})

test('L1 comparison mode: an outage both versions share does not trip; migrated worse than legacy does', () => {
  const rules = { ...defaults, compareWithLegacy: true, legacyMargin: 0.02 }
  assert.equal(judge(totals([40, 40, 400, 400], [40, 40, 400, 400]), rules).trip, false, 'both down')
  assert.equal(judge(totals([40, 2, 400, 0], [1000, 60, 9000, 400]), rules).trip, false, '6% against legacy 4.4%: within the margin')
  const worse = judge(totals([40, 30, 400, 8], [40, 30, 400, 8]), rules)
  assert.equal(worse.trip, true)
  assert.match(worse.reason, /legacy 2%/)
  assert.equal(judge(totals([40, 40], [40, 40]), rules).trip, true, 'no legacy traffic to compare with: the absolute rule decides')
})

test('L1 needs guards.l1.minUsers distinct failing users in the window that trips', () => {
  assert.equal(defaults.minUsers, 10)
  const hard = totals([40, 40], [200, 200])
  assert.equal(judge({ ...hard, failingUsers: { fast: 1, long: 1 } }, defaults).trip, false, 'one user failing 200 times')
  assert.match(judge({ ...hard, failingUsers: { fast: 9, long: 9 } }, defaults).reason, /9 distinct users of the 10 needed/)
  const enough = judge({ ...hard, failingUsers: { fast: 10, long: 3 } }, defaults)
  assert.equal(enough.trip, true)
  assert.equal(enough.window, 'fast')
  assert.equal(judge({ ...hard, failingUsers: { fast: 3, long: 10 } }, defaults).window, 'long')
})

test('fleet counts: failing users are shared as HyperLogLogs, a user failing on two instances counted once', async (t) => {
  const redis = await startRedis(t)
  const keys = new RolloutKeys('dbshift', 'users')
  const options = { fastMs: 10_000, longMs: 300_000, localSlotMs: 1_000, versions: ['migrated'] as const }
  const a = new FleetCounts(redis.client, keys, options)
  const b = new FleetCounts(redis.client, keys, options)
  const now = 1_700_000_000_000
  const windowA = new TrafficWindow({ now: () => now })
  const windowB = new TrafficWindow({ now: () => now })
  for (let i = 0; i < 100; i++) windowA.record('migrated', true, 'mallory')
  for (let i = 0; i < 12; i++) windowB.record('migrated', true, i < 6 ? 'mallory' : `user-${i}`)
  windowB.record('migrated', false, 'not-an-error')
  assert.equal(windowA.failingUsers('migrated', 10_000), 1)
  a.add(windowA.drain(), 1_000, now)
  b.add(windowB.drain(), 1_000, now)
  await a.exchange(now, 0)
  const both = await b.exchange(now, 0)
  assert.deepEqual(both.fast.migrated, { requests: 113, errors: 112 })
  assert.deepEqual(both.failingUsers, { fast: 7, long: 7 }, 'mallory on both instances, and six others')
  const stored = await redis.client.keys('dbshift:{users}:traffic:*')
  assert.ok(stored.some((key) => key.endsWith(':users')), 'a HyperLogLog per slot')
  assert.ok(stored.every((key) => !key.includes('mallory')), 'no user key in a key name')
})

test('fleet counts: instances add up in Redis, slots slide out of the window, a resume starts afresh', async (t) => {
  const redis = await startRedis(t)
  const keys = new RolloutKeys('dbshift', 'default')
  const options = { fastMs: 10_000, longMs: 300_000, localSlotMs: 1_000, versions: ['legacy', 'migrated'] as const }
  const a = new FleetCounts(redis.client, keys, options)
  const b = new FleetCounts(redis.client, keys, options)
  assert.deepEqual(a.slotWidths, { fast: 2_000, long: 30_000 })

  let now = 1_700_000_000_000
  const windowA = new TrafficWindow({ now: () => now })
  const windowB = new TrafficWindow({ now: () => now })
  for (let i = 0; i < 30; i++) windowA.record('migrated', i < 15)
  for (let i = 0; i < 30; i++) windowB.record('migrated', i < 15)
  windowB.record('legacy', false)
  a.add(windowA.drain(), 1_000, now)
  b.add(windowB.drain(), 1_000, now)
  await a.exchange(now, 0)
  const both = await b.exchange(now, 0)
  assert.deepEqual(both.fast.migrated, { requests: 60, errors: 30 }, 'two instances with 30 requests each are judged as 60')
  assert.deepEqual(both.long.migrated, { requests: 60, errors: 30 })
  assert.deepEqual(both.long.legacy, { requests: 1, errors: 0 })
  assert.equal(a.pending + b.pending, 0, 'sent counts are not sent twice')
  assert.deepEqual((await a.exchange(now, 0)).fast.migrated, { requests: 60, errors: 30 })

  // 12 s later the fast window has let go of them; the 5-minute window still holds them.
  now += 12_000
  const later = await a.exchange(now, 0)
  assert.deepEqual(later.fast.migrated, { requests: 0, errors: 0 })
  assert.deepEqual(later.long.migrated, { requests: 60, errors: 30 })
  // After a resume at `now`, what came before does not count.
  assert.deepEqual((await a.exchange(now, now)).long.migrated, { requests: 0, errors: 0 })

  const ttl = await redis.client.ttl(keys.traffic('migrated', `30000:${Math.floor((now - 12_000) / 30_000)}`))
  assert.ok(ttl > 300 && ttl <= 360, `slot keys expire after the window (ttl ${ttl} s)`)
})

test('fleet counts: what could not be sent is kept for the next exchange, while it is still in the window', async (t) => {
  const redis = await startRedis(t)
  const keys = new RolloutKeys('dbshift', 'default')
  const fleet = new FleetCounts(redis.client, keys, { fastMs: 10_000, longMs: 60_000, localSlotMs: 1_000, versions: ['migrated'] })
  let now = 1_700_000_000_000
  const window = new TrafficWindow({ now: () => now })
  for (let i = 0; i < 25; i++) window.record('migrated', true)
  fleet.add(window.drain(), 1_000, now)
  await redis.stop()
  await assert.rejects(fleet.exchange(now, 0))
  assert.ok(fleet.pending > 0)
  await redis.start()
  await redis.client.ping()
  now += 1_000
  assert.deepEqual((await fleet.exchange(now, 0)).fast.migrated, { requests: 25, errors: 25 })
  // Counts older than every window are dropped instead of piling up while Redis is away.
  for (let i = 0; i < 5; i++) window.record('migrated', true)
  fleet.add(window.drain(), 1_000, now)
  now += 120_000
  fleet.add([], 1_000, now)
  assert.equal(fleet.pending, 0)
})
