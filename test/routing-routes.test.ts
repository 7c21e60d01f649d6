import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import { Router, type RoutingState } from '../src/routing/decide.ts'
import { classOf, DEFAULT_ROUTE, globProblem, RouteTable, type RouteConfig } from '../src/routing/routes.ts'
import { toByteString } from '../src/routing/user-key.ts'

const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
const state = (percent: number, extra: Partial<RoutingState> = {}): RoutingState =>
  ({ percent, rolledBack: false, allow: new Set(), deny: new Set(), ...extra })

const ROUTES: RouteConfig[] = [
  { name: 'static', path: '/static/**', mode: 'legacy' },
  { name: 'webhooks', path: '/webhooks/**', mode: 'legacy' },
  { name: 'new-api', path: '/v2/**', mode: 'migrated' },
  { name: 'search', path: '/search', methods: ['POST'], mode: 'split', class: 'read' },
  { name: 'track', path: '/track/*', mode: 'split', class: 'write' },
  { name: 'reports', path: '/reports/**', mode: 'split' },
  { name: 'reports-again', path: '/reports/q', mode: 'legacy' }
]
const table = new RouteTable(ROUTES)

/** Keys by bucket, found by search, so that each test names the bucket it depends on. */
function keyWithBucketIn (from: number, to: number): string {
  for (let i = 0; ; i++) {
    const key = `user-${i}`
    const bucket = router.bucketOf(key)
    if (bucket >= from && bucket < to) return key
  }
}

test('first match wins; methods narrow a route; unmatched requests are on the default route', () => {
  assert.equal(table.match('GET', '/static/app.js').name, 'static')
  assert.equal(table.match('GET', '/static').name, 'static')
  assert.equal(table.match('GET', '/staticfile').name, 'default')
  assert.equal(table.match('POST', '/search').name, 'search')
  assert.equal(table.match('GET', '/search').name, 'default')
  assert.equal(table.match('GET', '/reports/q').name, 'reports') // `reports-again` is never reached
  assert.equal(table.match('GET', '/track/click').name, 'track')
  assert.equal(table.match('GET', '/track/a/b').name, 'default') // `*` stays inside one segment
  assert.equal(table.match('GET', '/').name, 'default')
  assert.equal(table.match(undefined, '/search'), DEFAULT_ROUTE)
})

test('a read is GET, HEAD or OPTIONS, anything else writes, unless the route gives a class', () => {
  for (const method of ['GET', 'HEAD', 'OPTIONS']) assert.equal(classOf(method, DEFAULT_ROUTE), 'read')
  for (const method of ['POST', 'PUT', 'PATCH', 'DELETE', 'PROPFIND', 'get']) assert.equal(classOf(method, DEFAULT_ROUTE), 'write')
  assert.equal(classOf('POST', table.match('POST', '/search')), 'read')
  assert.equal(classOf('GET', table.match('GET', '/track/view')), 'write')
})

test('legacy and migrated routes send everyone, without a hash; a rollback still sends everyone to legacy', () => {
  const everyone = state(100, { allow: new Set(['tester']) })
  for (const key of ['tester', 'user-1', undefined]) {
    for (const cls of ['read', 'write'] as const) {
      assert.deepEqual(router.decide(everyone, key, cls, table.match('GET', '/static/x')), { version: 'legacy', why: 'route', bucket: -1 })
      assert.deepEqual(router.decide(state(0), key, cls, table.match('GET', '/v2/orders')), { version: 'migrated', why: 'route', bucket: -1 })
      assert.equal(router.decide(state(0, { rolledBack: true }), key, cls, table.match('GET', '/v2/orders')).version, 'legacy')
    }
  }
})

test('reads follow percent, writes follow min(write_percent, percent); both cohorts, the split one and neither', () => {
  const dials = state(50, { writePercent: 5 })
  const both = keyWithBucketIn(0, 500)
  const split = keyWithBucketIn(500, 5000)
  const neither = keyWithBucketIn(5000, 10_000)
  assert.deepEqual(router.decide(dials, both, 'read'), { version: 'migrated', why: 'bucket', bucket: router.bucketOf(both) })
  assert.equal(router.decide(dials, both, 'write').version, 'migrated')
  assert.deepEqual(router.decide(dials, split, 'read'), { version: 'migrated', why: 'bucket', bucket: router.bucketOf(split) })
  assert.deepEqual(router.decide(dials, split, 'write'), { version: 'legacy', why: 'write_dial', bucket: router.bucketOf(split) })
  assert.equal(router.decide(dials, split, 'read', DEFAULT_ROUTE, true).why, 'read_your_writes')
  assert.equal(router.decide(dials, split, 'read', DEFAULT_ROUTE, true).version, 'legacy')
  assert.equal(router.decide(dials, neither, 'read').version, 'legacy')
  assert.equal(router.decide(dials, neither, 'write').version, 'legacy')
  // A write dial above percent changes nothing: whoever writes to migrated also reads from it.
  assert.equal(router.decide(state(5, { writePercent: 50 }), split, 'write').version, 'legacy')
  // A missing write dial is the same as percent; a recent write outside the split cohort changes nothing.
  assert.equal(router.decide(state(50), split, 'write').version, 'migrated')
  assert.equal(router.decide(state(50), split, 'read', DEFAULT_ROUTE, true).version, 'migrated')
})

test('rollback, deny and allow apply to reads and writes alike', () => {
  const dials = state(50, { writePercent: 5, allow: new Set(['tester']), deny: new Set(['vip', 'tester']) })
  for (const cls of ['read', 'write'] as const) {
    assert.equal(router.decide(dials, 'vip', cls).why, 'deny')
    assert.equal(router.decide(dials, 'tester', cls).why, 'deny')
    assert.deepEqual(router.decide(state(0, { writePercent: 0, allow: new Set(['tester']) }), 'tester', cls), { version: 'migrated', why: 'allow', bucket: -1 })
    assert.equal(router.decide(state(100, { rolledBack: true, allow: new Set(['tester']) }), 'tester', cls).why, 'rolled_back')
  }
})

test('route dials nest under the same bucket, and never hold back the reads of users whose writes are migrated', () => {
  const reports = table.match('GET', '/reports/q')
  const dials = state(50, { writePercent: 5, routePercent: new Map([['reports', 20], ['search', 80]]) })
  const at3 = keyWithBucketIn(300, 400)
  const at15 = keyWithBucketIn(1500, 1600)
  const at30 = keyWithBucketIn(3000, 3100)
  const at60 = keyWithBucketIn(6000, 6100)
  assert.equal(router.decide(dials, at15, 'read', reports).version, 'migrated')
  assert.equal(router.decide(dials, at30, 'read', reports).version, 'legacy') // held at 20% on this route
  assert.equal(router.decide(dials, at30, 'read').version, 'migrated') // 50% elsewhere
  assert.equal(router.decide(dials, at60, 'read', table.match('POST', '/search')).version, 'migrated') // ahead at 80%
  // Writes follow one threshold on every route, so a user's data stays on one side.
  assert.equal(router.decide(dials, at3, 'write', reports).version, 'migrated')
  assert.equal(router.decide(dials, at15, 'write', reports).version, 'legacy')
  // A route held below the write dial still reads from migrated for users who write there.
  const held = state(50, { writePercent: 5, routePercent: new Map([['reports', 2]]) })
  assert.equal(router.decide(held, at3, 'read', reports).version, 'migrated')
  assert.equal(router.decide(held, keyWithBucketIn(600, 700), 'read', reports).version, 'legacy')
  // The default route has no dial of its own.
  assert.equal(router.decide(state(50, { routePercent: new Map([['default', 0]]) }), at30, 'read').version, 'migrated')
})

test('anonymous requests go where the policy says, while the class has a share above 0%', () => {
  const anonymousMigrated = new Router({ strategy: 'hash', salt: 'default', anonymous: 'migrated' })
  assert.equal(anonymousMigrated.decide(state(20, { writePercent: 0 }), undefined, 'read').version, 'migrated')
  assert.equal(anonymousMigrated.decide(state(20, { writePercent: 0 }), undefined, 'write').version, 'legacy')
  assert.equal(router.decide(state(20), undefined, 'write').version, 'legacy')
})

test('explain says both versions and why', () => {
  const split = keyWithBucketIn(500, 5000)
  const explanation = router.explain(state(50, { writePercent: 5 }), split)
  assert.deepEqual(explanation, {
    route: 'default',
    bucket: router.bucketOf(split),
    readThreshold: 5000,
    writeThreshold: 500,
    reads: { version: 'migrated', why: 'bucket' },
    writes: { version: 'legacy', why: 'write_dial' }
  })
  assert.deepEqual(router.explain(state(50), 'vip', table.match('GET', '/static/a')).reads, { version: 'legacy', why: 'route' })
})

test('for random dials with write_percent ≤ percent, no user is ever migrated for writes and legacy for reads (property)', () => {
  const dial = fc.integer({ min: 0, max: 10_000 }).map((n) => n / 100)
  fc.assert(fc.property(
    dial, dial, fc.option(dial), fc.option(dial), fc.string({ minLength: 1, maxLength: 32 }), fc.boolean(),
    (a, b, reportsDial, searchDial, user, recentWrite) => {
      const routePercent = new Map<string, number>()
      if (reportsDial !== null) routePercent.set('reports', reportsDial)
      if (searchDial !== null) routePercent.set('search', searchDial)
      const dials = state(Math.max(a, b), { writePercent: Math.min(a, b), routePercent })
      const key = toByteString(user)
      const split = [DEFAULT_ROUTE, ...table.routes].filter((route) => route.mode === 'split')
      const writesMigrated = split.some((route) => router.decide(dials, key, 'write', route).version === 'migrated')
      for (const route of split) {
        const read = router.decide(dials, key, 'read', route, recentWrite).version
        if (writesMigrated) assert.equal(read, 'migrated', `${user} on ${route.name}`)
      }
    }), { numRuns: 3000 })
})

test('route globs that no normalised path could match, and duplicate names, are refused', () => {
  assert.equal(globProblem('/reports/**'), undefined)
  assert.equal(globProblem('/a/{b,c}/*.js'), undefined)
  assert.match(globProblem('reports/**') ?? '', /must start with "\/"/)
  assert.match(globProblem('!/static/**') ?? '', /must start with "\/"/)
  assert.match(globProblem('/reports//q') ?? '', /normalised/)
  assert.match(globProblem('/reports/../q') ?? '', /normalised/)
  assert.match(globProblem('/reports/') ?? '', /trailing|end with/)
  assert.match(globProblem('/a/{b,c') ?? '', /not a valid glob/)
  assert.match(globProblem('/a%2Fb') ?? '', /encoded/)
  assert.throws(() => new RouteTable([{ name: 'a', path: '/a', mode: 'split' }, { name: 'a', path: '/b', mode: 'split' }]), /used twice/)
  assert.throws(() => new RouteTable([{ name: 'default', path: '/a', mode: 'split' }]), /reserved/)
})

test('a decision is a shared, frozen value: deciding again for the same bucket returns the same one', () => {
  const dials = state(50, { writePercent: 5 })
  const key = keyWithBucketIn(500, 5000)
  const first = router.decide(dials, key, 'write')
  assert.equal(router.decide(dials, key, 'write'), first)
  assert.ok(Object.isFrozen(first))
  assert.ok(Object.isFrozen(router.decide(dials, undefined)))
  assert.notEqual(router.decide(dials, key, 'read'), first)
})
