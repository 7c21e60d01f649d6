import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy, type TestRedis } from './helpers.ts'

/** A rollout name of this file's own: its keys cannot meet any other test's. */
const ROLLOUT = 'dials'
const KEY = (name: string): string => `dbshift:{${ROLLOUT}}:${name}`
const ROUTES = [
  { name: 'static', path: '/static/**', mode: 'legacy' },
  { name: 'reports', path: '/reports/**', mode: 'split' }
]
const API = { by: 'dials-test', source: 'api' as const }

async function setup (t: TestContext): Promise<{ redis: TestRedis, proxy: TestProxy }> {
  const redis = await startRedis(t)
  const upstream = await startUpstream(t, 'both')
  const proxy = await startProxy(t, testConfig(redis.url, upstream.url, upstream.url, { rollout: { name: ROLLOUT }, routes: ROUTES }))
  return { redis, proxy }
}

test('the write dial and route dials set by hand in Redis reach the instance; missing ones follow percent', async (t) => {
  const { redis, proxy } = await setup(t)
  assert.equal(proxy.app.sync.current.writePercent, undefined)
  assert.equal(proxy.app.sync.current.routePercent.size, 0)
  await redis.client.set(KEY('percent'), '50')
  await redis.client.set(KEY('write_percent'), '5')
  await redis.client.set(KEY('route:reports:percent'), '2')
  const next = await untilRollout(proxy.app, (s) => s.writePercent === 5 && s.routePercent.get('reports') === 2 && s.percent === 50)
  assert.deepEqual([...next.routePercent], [['reports', 2]])
  // Only configured routes have dials: a key for another name is not read.
  await redis.client.set(KEY('route:unknown:percent'), '90')
  await redis.client.del(KEY('write_percent'))
  const deleted = await untilRollout(proxy.app, (s) => s.writePercent === undefined)
  assert.deepEqual([...deleted.routePercent], [['reports', 2]])
})

test('an invalid write or route dial is ignored, logged with its key and value, and counted; the last valid one stays', async (t) => {
  const { redis, proxy } = await setup(t)
  await redis.client.set(KEY('write_percent'), '5')
  await redis.client.set(KEY('route:reports:percent'), '2')
  await untilRollout(proxy.app, (s) => s.writePercent === 5 && s.routePercent.get('reports') === 2)
  await redis.client.set(KEY('write_percent'), '150')
  await redis.client.set(KEY('route:reports:percent'), 'abc')
  await redis.client.set(KEY('percent'), '30') // a valid change read in the same pass
  await untilRollout(proxy.app, (s) => s.percent === 30)
  assert.equal(proxy.app.sync.current.writePercent, 5)
  assert.equal(proxy.app.sync.current.routePercent.get('reports'), 2)
  for (const [key, value] of [[KEY('write_percent'), '150'], [KEY('route:reports:percent'), 'abc']]) {
    assert.ok(proxy.logs.some((line) => line.key === key && line.value === value), `${key} = ${value} is logged`)
  }
  assert.equal((await proxy.app.metrics.configErrors.get()).values[0]?.value, 2)
})

test('the command layer turns the write and route dials, audited; a raise is refused while the ramp is frozen', async (t) => {
  const { redis, proxy } = await setup(t)
  const { control } = proxy.app
  assert.equal((await control.setPercent(50, API)).status, 'ok')

  const write = await control.setDial(undefined, 5, API, 'writes behind reads')
  assert.deepEqual(write, { status: 'ok', dial: 'write_percent', percent: 5, previous: null })
  assert.equal(proxy.app.sync.current.writePercent, 5, 'read back at once on the instance that made it')
  assert.equal((await control.setDial(undefined, 5, API)).status, 'noop')
  assert.equal((await control.setDial('reports', 2, API)).status, 'ok')
  assert.equal(proxy.app.sync.current.routePercent.get('reports'), 2)
  const unknown = await control.setDial('nope', 2, API)
  assert.equal(unknown.status, 'refused')
  assert.match(unknown.status === 'refused' ? unknown.message : '', /no route is named "nope".*configured: static, reports/)
  assert.equal((await control.setDial(undefined, 20.555, API)).status, 'refused')

  await redis.client.set(KEY('freeze'), 'L2: database load 0.95')
  const raise = await control.setDial(undefined, 10, API)
  assert.equal(raise.status, 'refused')
  assert.equal(raise.status === 'refused' ? raise.code : '', 'DBSHIFT_ERR_RAMP_FROZEN')
  assert.equal((await control.setDial(undefined, 1, API)).status, 'ok', 'lowering still works')
  // A route dial that has none gives `percent` now: 40 is a lowering, 60 a raise.
  assert.equal((await control.setDial('static', 60, API)).status, 'refused')
  assert.equal((await control.setDial('static', 40, API)).status, 'ok')
  assert.equal((await control.setDial(undefined, null, API)).status, 'ok', 'deleting the write dial is allowed while frozen')
  assert.equal(await redis.client.exists(KEY('write_percent')), 0)

  const audit = (await redis.client.xrange(KEY('audit'), '-', '+')).map(([, fields]) => {
    const entry: Record<string, string> = {}
    for (let i = 0; i + 1 < fields.length; i += 2) entry[fields[i] as string] = fields[i + 1] as string
    return entry
  })
  const actions = audit.map((entry) => `${entry.action}:${entry.old}→${entry.new}${entry.route === undefined ? '' : `@${entry.route}`}`)
  assert.deepEqual(actions, [
    'set_percent:→50',
    'set_write_percent:→5',
    'set_route_percent:→2@reports',
    'set_write_percent_refused:5→10',
    'set_write_percent:5→1',
    'set_route_percent_refused:→60@static',
    'set_route_percent:→40@static',
    'set_write_percent:1→'
  ])
  assert.equal(audit[1]?.reason, 'writes behind reads')
  assert.equal(audit[1]?.by, 'dials-test')
})
