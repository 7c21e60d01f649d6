import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Histogram, Registry } from 'prom-client'
import { explainGuards } from '../src/admin/console/explain.ts'
import { History, p99Ms } from '../src/admin/console/history.ts'
import { resolveConfig } from '../src/config.ts'
import { initialSnapshot, type RolloutSnapshot } from '../src/rollout/snapshot.ts'
import { TrafficWindow } from '../src/traffic/window.ts'

const pools = { legacy: ['http://legacy'], migrated: ['http://migrated'] }
const rules = (guards: Record<string, unknown> = {}): ReturnType<typeof resolveConfig>['guards'] => resolveConfig({ pools, guards }).guards
const active = initialSnapshot(20)
const counts = (requests: number, errors: number): { requests: number, errors: number } => ({ requests, errors })
const l1 = (long: [number, number], fast: [number, number], wouldTrip = false, reason = ''): Record<string, unknown> => ({
  last: { at: '2026-01-01T00:00:00.000Z', source: 'fleet', totals: { long: { legacy: counts(0, 0), migrated: counts(...long) }, fast: { legacy: counts(0, 0), migrated: counts(...fast) } }, wouldTrip, reason }
})
const sentence = (guards: Record<string, unknown>, status: Record<string, unknown>, rollout: RolloutSnapshot = active): string[] =>
  explainGuards(rules(guards), status, rollout).map((row) => row.sentence)

test('L1 says why it did or did not act: below the minimum sample, under the threshold, over it (and dry run), rolled back, disabled', () => {
  assert.equal(sentence({}, { l1: l1([1000, 12], [40, 0]) })[0], 'migrated 1.2% errors over 5 min ≤ 5%: no action')
  assert.equal(sentence({}, { l1: l1([60, 6], [10, 0]) })[0], 'migrated 60 requests over 5 min < the 100 needed: no action yet')
  assert.equal(sentence({}, { l1: {} })[0], 'no migrated requests judged in the last 5 min: nothing to act on')
  const reason = 'migrated error rate 8% (80 of 1000) over 5 min > 5%'
  assert.equal(sentence({}, { l1: l1([1000, 80], [40, 0], true, reason) })[0], `${reason}: rolling back`)
  assert.equal(sentence({ l1: { dryRun: true } }, { l1: l1([1000, 80], [40, 0], true, reason) })[0], `${reason}: would roll back (dry run: no action)`)
  const tripped: RolloutSnapshot = { ...active, state: 'rolled_back', rolledBack: true, trip: { level: 'L1', reason, at: '2026-01-01T00:00:00.000Z', by: 'edge-1' } }
  const row = explainGuards(rules(), { l1: l1([1000, 80], [40, 0], true, reason) }, tripped)[0]
  assert.equal(row?.acting, true)
  assert.match(row?.sentence ?? '', /^rolled back at 2026-01-01T00:00:00.000Z: migrated error rate 8%.*until an operator resumes/)
  assert.match(sentence({ l1: { enabled: false } }, {})[0] ?? '', /^disabled/)
  const facts = explainGuards(rules(), { l1: l1([1000, 12], [40, 0]) }, active)[0]
  assert.equal(facts?.threshold, '> 5% over 5 min (fast: ≥ 50% over 10 s)')
  assert.equal(facts?.minSample, '100 requests (fast: 20)')
  assert.equal(facts?.current, '1.2% (12 of 1000) over 5 min; 0% (0 of 40) over 10 s')
})

test('L2 and L3 say why they did or did not act', () => {
  assert.equal(sentence({}, { l2: { source: 'dbshift:{x}:signal:db_load', load: null } })[1], 'no load reading from dbshift:{x}:signal:db_load: no action')
  assert.equal(sentence({}, { l2: { load: 0.42 } })[1], 'database load 0.42 ≤ 0.8: no action')
  assert.equal(sentence({}, { l2: { load: 0.91, aboveSince: '2026-01-01T00:00:00.000Z' } })[1], 'database load 0.91 > 0.8 since 2026-01-01T00:00:00.000Z; acts once sustained 3 min: watching')
  assert.equal(sentence({}, { l2: { load: 0.95, paused: true, reason: 'database load 0.95 > 0.8 for 3 min' } })[1], 'paused the new-feature routes and froze the ramp: database load 0.95 > 0.8 for 3 min')
  assert.equal(sentence({}, {})[2], 'disabled (guards.l3.enabled: false): no shadow comparison, no data-rollback webhook')
  assert.equal(sentence({ l3: { enabled: true } }, { l3: { comparisons: 20, mismatches: 5 } })[2], '5 mismatches in 20 comparisons over 5 min, < the 50 needed: no action yet')
  assert.equal(sentence({ l3: { enabled: true } }, { l3: { comparisons: 100, mismatches: 2 } })[2], '2% mismatches over 5 min ≤ 5%: no action')
  assert.equal(sentence({ l3: { enabled: true, dryRun: true } }, { l3: { comparisons: 100, mismatches: 9 } })[2], '9% mismatches over 5 min > 5%: would roll back (dry run: no action)')
})

test('p99 from two readings of a cumulative histogram, interpolated within its bucket', () => {
  const reading = (entries: Array<[string, number]>): Map<string, number> => new Map(entries)
  // 100 answers: 98 under 10 ms, 2 between 10 and 25 ms: the 99th is half-way into the 10–25 ms bucket.
  assert.equal(p99Ms(reading([['0.01', 98], ['0.025', 100], ['+Inf', 100]]), undefined), 17.5)
  // Only what happened since the earlier reading counts.
  assert.equal(p99Ms(reading([['0.01', 198], ['0.025', 200], ['+Inf', 200]]), reading([['0.01', 100], ['0.025', 100], ['+Inf', 100]])), 17.5)
  assert.equal(p99Ms(reading([['0.01', 5], ['+Inf', 5]]), reading([['0.01', 5], ['+Inf', 5]])), null)
  // Beyond the last finite bucket: that bucket's bound.
  assert.equal(p99Ms(reading([['0.01', 1], ['10', 1], ['+Inf', 100]]), undefined), 10_000)
})

test('the history keeps an hour of points per version, with rate, error rate and p99, on an injected clock', async () => {
  let now = 1_000_000
  const traffic = new TrafficWindow({ now: () => now })
  const duration = new Histogram({ name: 'd_seconds', help: 'd', labelNames: ['version'], buckets: [0.01, 0.1, 1], registers: [new Registry()] })
  const history = new History({ traffic, duration, now: () => now, sampleMs: 10_000, spanMs: 60_000 })
  now += 5_000 // answers in the middle of the first interval
  for (let i = 0; i < 50; i++) {
    traffic.record('migrated', i < 5)
    duration.labels('migrated').observe(0.05)
  }
  now += 5_000
  const point = await history.sample()
  assert.deepEqual(point.migrated, { rps: 5, errorRate: 0.1, p99Ms: 99.1 })
  assert.deepEqual(point.legacy, { rps: 0, errorRate: 0, p99Ms: null })
  for (let i = 0; i < 10; i++) {
    now += 10_000
    await history.sample()
  }
  const points = await history.points()
  assert.ok(points.length <= 7, `${points.length} points kept for a 60 s span`)
  assert.equal(points.at(-1)?.migrated.rps, 0)
})
