import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Registry } from 'prom-client'
import { Metrics } from '../src/metrics.ts'
import { RouteTable } from '../src/routing/routes.ts'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const table = new RouteTable([
  { name: 'static', path: '/static/**', mode: 'legacy' },
  { name: 'reports', path: '/reports/**', mode: 'split' }
])

async function series (registry: Registry): Promise<Map<string, number>> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === 'dbshift_route_requests_total')
  assert.ok(metric !== undefined, 'dbshift_route_requests_total is exported')
  return new Map(metric.values.map((v) => [`${String(v.labels.route)}/${String(v.labels.version)}/${String(v.labels.class)}`, v.value]))
}

test('dbshift_route_requests_total counts by configured route, version and class, with every series at 0 from the start', async () => {
  const registry = new Registry()
  const metrics = new Metrics(registry, { defaultMetrics: false, routes: table.routes.map((route) => route.name) })
  const start = await series(registry)
  assert.equal(start.size, 3 * 2 * 2)
  assert.ok([...start.values()].every((n) => n === 0))

  const reports = table.match('GET', '/reports/q')
  metrics.recordRoute(reports.index, 'migrated', 'read')
  metrics.recordRoute(reports.index, 'migrated', 'read')
  metrics.recordRoute(reports.index, 'legacy', 'write')
  metrics.recordRoute(table.match('GET', '/static/a.js').index, 'legacy', 'read')
  metrics.recordRoute(table.match('POST', '/orders').index, 'legacy', 'write')
  metrics.recordRoute(7, 'legacy', 'read') // an index no route has: not counted, never a new label
  const counted = await series(registry)
  assert.equal(counted.get('reports/migrated/read'), 2)
  assert.equal(counted.get('reports/legacy/write'), 1)
  assert.equal(counted.get('static/legacy/read'), 1)
  assert.equal(counted.get('default/legacy/write'), 1)
  assert.equal(counted.size, 12, 'route names come from the config only')
  // Handed over once: a second scrape shows the same totals.
  assert.deepEqual(await series(registry), counted)
})

test('without configured routes, only the default route is counted', async () => {
  const registry = new Registry()
  const metrics = new Metrics(registry, { defaultMetrics: false })
  metrics.recordRoute(-1, 'migrated', 'write')
  const counted = await series(registry)
  assert.deepEqual([...counted.keys()].sort(), ['default/legacy/read', 'default/legacy/write', 'default/migrated/read', 'default/migrated/write'])
  assert.equal(counted.get('default/migrated/write'), 1)
})

test('the dials in force are exported: the write dial as it acts, and each route\'s share of reads', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const routes = [
    { name: 'static', path: '/static/**', mode: 'legacy' as const },
    { name: 'beta', path: '/beta/**', mode: 'migrated' as const },
    { name: 'reports', path: '/reports/**', mode: 'split' as const },
    { name: 'search', path: '/search', mode: 'split' as const }
  ]
  const { app, adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { routes }))
  const dials = async (): Promise<Record<string, string>> => {
    const text = await (await fetch(`${adminUrl}/metrics`)).text()
    return Object.fromEntries([...text.matchAll(/^(dbshift_rollout_(?:write_|route_)?percent(?:\{route="[^"]+"\})?) (\S+)$/gm)].map((m) => [m[1], m[2]]))
  }
  const operator = { by: 'alice', source: 'cli' } as const
  await app.control.setPercent(50, operator)
  await app.control.setDial(undefined, 5, operator)
  await app.control.setDial('reports', 2, operator)
  await untilRollout(app, (s) => s.writePercent === 5 && s.routePercent.get('reports') === 2)
  assert.deepEqual(await dials(), {
    dbshift_rollout_percent: '50',
    dbshift_rollout_write_percent: '5',
    'dbshift_rollout_route_percent{route="static"}': '0',
    'dbshift_rollout_route_percent{route="beta"}': '100',
    'dbshift_rollout_route_percent{route="reports"}': '5', // a route dial below the write dial does not hold back users whose writes are migrated
    'dbshift_rollout_route_percent{route="search"}': '50'
  })
  // Missing, the write dial follows the percentage; above it, it changes nothing.
  await app.control.setDial(undefined, 80, operator)
  await untilRollout(app, (s) => s.writePercent === 80)
  assert.equal((await dials()).dbshift_rollout_write_percent, '50')
  await app.control.setDial(undefined, null, operator)
  await untilRollout(app, (s) => s.writePercent === undefined)
  assert.equal((await dials()).dbshift_rollout_write_percent, '50')
})
