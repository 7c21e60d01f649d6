import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test, type TestContext } from 'node:test'
import { buildApp, type App } from '../src/app.ts'
import { captureLogs, getAs, nextGuardEvent, startRedis, startUpstream, testConfig, type TestRedis, untilRollout } from './helpers.ts'

/** A rollout name of this file's own: its keys cannot meet any other test's. */
const ROLLOUT = 'guard-l2'

const TOKEN = 'l2-test-token-0123456789'
const LOAD = `dbshift:{${ROLLOUT}}:signal:db_load`
const FREEZE = `dbshift:{${ROLLOUT}}:freeze`

interface Instance {
  app: App
  url: string
  adminUrl: string
  logs: Array<Record<string, unknown>>
  /** The instance's clock: the sustain time passes when the test says so. */
  clock: { now: number }
}

async function start (t: TestContext, redis: TestRedis, upstreams: { legacy: string, migrated: string }, l2: Record<string, unknown>, id = 'i0'): Promise<Instance> {
  const clock = { now: Date.now() }
  const config = testConfig(redis.url, upstreams.legacy, upstreams.migrated, {
    instanceId: id,
    rollout: { name: ROLLOUT },
    admin: { token: TOKEN },
    guards: { signalPollIntervalMs: 100, l1: { enabled: false }, l2: { threshold: 0.8, sustainMs: 60_000, featureRoutes: ['/beta/**', '/api/v2/*/export'], retryAfterSeconds: 7, ...l2 } }
  })
  const { log, lines } = captureLogs()
  const app = await buildApp(config, { log, now: () => clock.now })
  const { proxy, admin } = await app.listen()
  t.after(async () => await app.close())
  return { app, url: `http://127.0.0.1:${proxy.port}`, adminUrl: `http://127.0.0.1:${admin.port}`, logs: lines, clock }
}

/** Sets the load signal and waits until the instance has read it (after moving its clock by `advanceMs`). */
async function load (redis: TestRedis, instance: Instance, value: string, advanceMs = 0): Promise<void> {
  await redis.client.set(LOAD, value)
  await nextGuardEvent(instance.app, 'signals', (values) => values.get(LOAD) === value)
  instance.clock.now += advanceMs
  await nextGuardEvent(instance.app, 'signals')
}

async function raise (instance: Instance, percent: number): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await fetch(`${instance.adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ percent }) })
  return { status: res.status, body: await res.json() as Record<string, unknown> }
}

async function setup (t: TestContext, l2: Record<string, unknown> = {}): Promise<{ redis: TestRedis, instance: Instance }> {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const instance = await start(t, redis, { legacy: legacy.url, migrated: migrated.url }, l2)
  return { redis, instance }
}

test('L2 closes the feature routes and freezes the ramp after sustained load, and reopens after sustained calm', async (t) => {
  const { redis, instance } = await setup(t)
  const { app, url } = instance

  // Above the threshold, but not yet for the sustain time: nothing happens.
  await load(redis, instance, '0.95', 59_000)
  assert.equal((await getAs(url, 'alice', '/beta/reports')).status, 200)
  // A dip under the threshold restarts the count.
  await load(redis, instance, '0.5')
  await load(redis, instance, '0.95', 30_000)
  assert.equal((await getAs(url, 'alice', '/beta/reports')).status, 200)
  assert.equal(await redis.client.exists(FREEZE), 0)

  const paused = nextGuardEvent(app, 'l2', (on) => on)
  instance.clock.now += 30_000
  await paused
  const closed = await fetch(`${url}/beta/reports?year=2026`, { headers: { 'x-user-id': 'alice' } })
  assert.equal(closed.status, 503)
  assert.equal(closed.headers.get('retry-after'), '7')
  assert.equal((await closed.json() as { error: string }).error, 'DBSHIFT_ERR_FEATURE_PAUSED')
  assert.equal((await getAs(url, 'alice', '/api/v2/42/export')).status, 503)
  assert.equal((await getAs(url, 'alice', '/orders')).status, 200, 'other routes are not paused')
  assert.equal((await getAs(url, 'alice', '/api/v2/42/view')).status, 200)

  assert.match(await redis.client.get(FREEZE) ?? '', /^L2: database load 0\.95 above 0\.8/)
  const refused = await raise(instance, 30)
  assert.equal(refused.status, 409, JSON.stringify(refused.body))
  assert.equal(refused.body.error, 'DBSHIFT_ERR_RAMP_FROZEN')
  const audit = await redis.client.xrange(`dbshift:{${ROLLOUT}}:audit`, '-', '+')
  assert.ok(audit.some(([, fields]) => fields.includes('freeze')), 'the freeze is in the audit stream')
  const refusal = audit.find(([, fields]) => fields.includes('set_percent_refused'))?.[1] ?? []
  assert.equal(refusal[refusal.indexOf('new') + 1], '30', 'the refused raise is in the audit stream')
  assert.match(refusal[refusal.indexOf('reason') + 1] ?? '', /^the ramp is frozen: L2: database load 0\.95/)
  assert.ok(instance.logs.some((line) => line.msg === 'refused a raise of the percentage: the ramp is frozen' && line.percent === 30))
  assert.equal((await app.metrics.l2Paused.get()).values[0]?.value, 1)
  assert.equal((await app.metrics.guardTrips.get()).values.find((v) => v.labels.level === 'L2')?.value, 1)
  const status = await (await fetch(`${instance.adminUrl}/status`)).json() as { guards: { l2: { paused: boolean, load: number }, config: { l2: { sustainMs: number } } } }
  assert.equal(status.guards.l2.paused, true)
  assert.equal(status.guards.l2.load, 0.95)
  assert.equal(status.guards.config.l2.sustainMs, 60_000)

  // Back under the threshold, for the sustain time: everything reopens.
  await load(redis, instance, '0.3', 59_000)
  assert.equal((await getAs(url, 'alice', '/beta/reports')).status, 503, 'still paused: calm for less than the sustain time')
  const reopened = nextGuardEvent(app, 'l2', (on) => !on)
  instance.clock.now += 1_000
  await reopened
  assert.equal((await getAs(url, 'alice', '/beta/reports')).status, 200)
  await untilFreezeGone(redis)
  assert.equal((await raise(instance, 30)).status, 200)
  await untilRollout(app, (s) => s.percent === 30)
})

test('L2 in dry run only logs and counts what it would have done', async (t) => {
  const { redis, instance } = await setup(t, { dryRun: true, sustainMs: 0 })
  const wouldHave = nextGuardEvent(instance.app, 'dryRun')
  await load(redis, instance, '0.99')
  const [level, reason] = await wouldHave
  assert.equal(level, 'L2')
  assert.match(reason, /database load 0\.99/)
  assert.equal((await getAs(instance.url, 'alice', '/beta/x')).status, 200)
  assert.equal(await redis.client.exists(FREEZE), 0)
  assert.equal((await raise(instance, 10)).status, 200)
  assert.equal((await instance.app.metrics.guardDryRuns.get()).values.find((v) => v.labels.level === 'L2')?.value, 1)
  assert.ok(instance.logs.some((line) => String(line.msg).startsWith('L2 guard would have tripped (dry run)')))
})

test('L2 follows the fleet: an instance finding the ramp frozen pauses its feature routes too; an invalid signal holds the state', async (t) => {
  const { redis, instance: first } = await setup(t, { sustainMs: 0 })
  const upstream = await startUpstream(t, 'both')
  const second = await start(t, redis, { legacy: upstream.url, migrated: upstream.url }, { sustainMs: 3_600_000 }, 'i1')
  const followed = nextGuardEvent(second.app, 'l2', (on) => on)
  await load(redis, first, '0.9')
  await followed
  assert.equal((await getAs(second.url, 'bob', '/beta/x')).status, 503, 'paused although its own sustain time has not passed')

  await redis.client.set(LOAD, 'lots')
  await nextGuardEvent(first.app, 'signals', (values) => values.get(LOAD) === 'lots')
  assert.equal((await getAs(first.url, 'bob', '/beta/x')).status, 503, 'an invalid value changes nothing')
  assert.ok(first.logs.some((line) => line.key === LOAD && line.value === 'lots'), 'and is logged with key and value')

  const reopened = nextGuardEvent(second.app, 'l2', (on) => !on)
  await load(redis, first, '0.1')
  await reopened
  assert.equal((await getAs(second.url, 'bob', '/beta/x')).status, 200)
})

/** The status of a GET for `path` exactly as written (fetch would resolve dot-segments before sending). */
async function statusOf (url: string, path: string): Promise<number> {
  return await new Promise((resolve, reject) => {
    const req = request(`${url}${path}`, { path, headers: { 'x-user-id': 'dave' } }, (res) => {
      res.resume()
      resolve(res.statusCode ?? 0)
    })
    req.on('error', reject).end()
  })
}

test('L2 pauses every spelling of a feature route alike: the path is normalised before it is matched', async (t) => {
  const { redis, instance } = await setup(t, { sustainMs: 0 })
  const paused = nextGuardEvent(instance.app, 'l2', (on) => on)
  await load(redis, instance, '0.95')
  await paused
  for (const spelling of ['/beta/x', '//beta//x', '/%62eta/x', '/x/../beta/x', '/./beta/x', '/beta/x/', '/api/v2/42/export/', '/api//v2/42/%65xport']) {
    assert.equal(await statusOf(instance.url, spelling), 503, spelling)
  }
  assert.equal(await statusOf(instance.url, '/Beta/x'), 200, 'paths are case-sensitive')
})

async function untilFreezeGone (redis: TestRedis): Promise<void> {
  const deadline = Date.now() + 5_000
  while (await redis.client.exists(FREEZE) === 1) {
    if (Date.now() > deadline) throw new Error('the freeze key was never removed')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('L2 can read the load from a Prometheus query instead of Redis', async (t) => {
  const answer = { load: '0.97' }
  const prometheus = await startUpstream(t, 'prometheus', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result: [{ metric: {}, value: [1764079200, answer.load] }] } }))
  })
  const { redis, instance } = await setup(t, { sustainMs: 0, pollIntervalMs: 100, prometheusUrl: `${prometheus.url}/api/v1/query?query=db_load` })
  await redis.client.set(LOAD, '0.1') // not read: Prometheus is the source
  await nextGuardEvent(instance.app, 'l2', (on) => on)
  assert.equal((await getAs(instance.url, 'carol', '/beta/x')).status, 503)
  assert.ok(prometheus.requests.some((req) => req.url === '/api/v1/query?query=db_load'))
  answer.load = '0.2'
  await nextGuardEvent(instance.app, 'l2', (on) => !on)
  assert.equal((await getAs(instance.url, 'carol', '/beta/x')).status, 200)
})
