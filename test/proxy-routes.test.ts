import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test, type TestContext } from 'node:test'
import { buildApp } from '../src/app.ts'
import { Router } from '../src/routing/decide.ts'
import { captureLogs, startRedis, startUpstream, testConfig, untilRollout, type TestRedis, type TestUpstream } from './helpers.ts'

/** A rollout name of this file's own: its keys cannot meet any other test's. */
const ROLLOUT = 'proxy-routes'
const KEY = (name: string): string => `dbshift:{${ROLLOUT}}:${name}`
const SECRET = 'proxy-routes-cookie-secret-0123456789'
const ROUTES = [
  { name: 'static', path: '/static/**', mode: 'legacy' },
  { name: 'webhooks', path: '/webhooks/**', mode: 'legacy' },
  { name: 'v2', path: '/v2/**', mode: 'migrated' },
  { name: 'search', path: '/search', methods: ['POST'], mode: 'split', class: 'read' },
  { name: 'track', path: '/track/**', mode: 'split', class: 'write' },
  { name: 'reports', path: '/reports/**', mode: 'split' }
]

interface Instance { url: string, clock: { now: number }, app: Awaited<ReturnType<typeof buildApp>> }

async function instance (t: TestContext, redis: TestRedis, legacy: TestUpstream, migrated: TestUpstream, rollout: Record<string, unknown> = {}): Promise<Instance> {
  const clock = { now: Date.now() }
  const config = testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: ROLLOUT, cookieSecret: SECRET, ...rollout }, routes: ROUTES })
  const app = await buildApp(config, { log: captureLogs().log, now: () => clock.now })
  const { proxy } = await app.listen()
  t.after(async () => await app.close())
  return { url: `http://127.0.0.1:${proxy.port}`, clock, app }
}

/** One request with its target exactly as written (fetch would resolve dot-segments first). */
async function send (url: string, method: string, path: string, user: string | undefined, cookie?: string): Promise<{ status: number, version: string | undefined, setCookie: string[], body: string }> {
  return await new Promise((resolve, reject) => {
    const headers: Record<string, string> = {}
    if (user !== undefined) headers['x-user-id'] = user
    if (cookie !== undefined) headers.cookie = cookie
    if (method !== 'GET') headers['content-length'] = '0'
    const req = request(`${url}/`, { method, path, headers }, (res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => { body += chunk.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, version: res.headers['x-dbshift-version'] as string | undefined, setCookie: res.headers['set-cookie'] ?? [], body }))
    })
    req.on('error', reject).end()
  })
}

const router = new Router({ strategy: 'hash', salt: ROLLOUT, anonymous: 'legacy' })
function userIn (from: number, to: number, prefix = 'u'): string {
  for (let i = 0; ; i++) {
    const bucket = router.bucketOf(`${prefix}-${i}`)
    if (bucket >= from && bucket < to) return `${prefix}-${i}`
  }
}
/** Reads at 50%, writes at 5%, reports at 20%: users of each cohort. */
const BOTH = userIn(0, 500)
const SPLIT = userIn(2000, 5000) // split everywhere but reports (which holds them on legacy)
const NEITHER = userIn(5000, 10_000)
const OTHER_SPLIT = userIn(2000, 5000, 'w')

async function setup (t: TestContext, rollout: Record<string, unknown> = {}): Promise<{ redis: TestRedis, a: Instance, b: Instance, legacy: TestUpstream, migrated: TestUpstream }> {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  await redis.client.mset(KEY('percent'), '50', KEY('write_percent'), '5', KEY('route:reports:percent'), '20')
  const a = await instance(t, redis, legacy, migrated, rollout)
  const b = await instance(t, redis, legacy, migrated, rollout)
  for (const i of [a, b]) await untilRollout(i.app, (s) => s.percent === 50 && s.writePercent === 5 && s.routePercent.get('reports') === 20)
  return { redis, a, b, legacy, migrated }
}

test('reads and writes of each cohort (both, split, neither) go where the dials say, on every instance', async (t) => {
  const { a, b } = await setup(t)
  for (const i of [a, b]) {
    const at = async (method: string, path: string, user: string): Promise<string | undefined> => (await send(i.url, method, path, user)).version
    assert.deepEqual([await at('GET', '/orders', BOTH), await at('POST', '/orders', BOTH)], ['migrated', 'migrated'])
    assert.deepEqual([await at('GET', '/orders', NEITHER), await at('DELETE', '/orders/1', NEITHER)], ['legacy', 'legacy'])
    assert.deepEqual([await at('HEAD', '/orders', SPLIT), await at('OPTIONS', '/orders', SPLIT), await at('PUT', '/orders/1', NEITHER)], ['migrated', 'migrated', 'legacy'])
    // Class overrides: a POST that only reads follows the read dial; a GET that writes, the write dial.
    assert.equal(await at('POST', '/search', userIn(500, 2000)), 'migrated')
    assert.equal(await at('GET', '/track/view', userIn(500, 2000)), 'legacy')
    // A route held behind the rest by its own dial, nested under the same bucket.
    // (another user: the GET to /track above was a write, so that user now reads their writes from legacy)
    assert.equal(await at('GET', '/reports/q', userIn(500, 2000, 'r')), 'migrated')
    assert.equal(await at('GET', '/reports/q', SPLIT), 'legacy')
    // Pass-through routes send everyone, without a hash.
    assert.deepEqual([await at('GET', '/static/app.js', BOTH), await at('POST', '/webhooks/stripe', BOTH), await at('GET', '/v2/orders', NEITHER)], ['legacy', 'legacy', 'migrated'])
  }
})

test('a user who writes then reads sees their write: by the cookie on another instance, by the marker on the same one', async (t) => {
  const { a, b } = await setup(t)
  const before = await send(b.url, 'GET', '/orders', SPLIT)
  assert.equal(before.version, 'migrated')

  const write = await send(a.url, 'POST', '/orders', SPLIT)
  assert.equal(write.version, 'legacy')
  const cookie = write.setCookie.find((c) => c.startsWith('dbshift_ryw='))
  assert.ok(cookie !== undefined, `a write of the split cohort sets the cookie: ${JSON.stringify(write.setCookie)}`)
  assert.match(cookie, /; Max-Age=2; Path=\/; HttpOnly; SameSite=Lax$/)
  const sent = cookie.split(';')[0] as string

  assert.equal((await send(b.url, 'GET', '/orders', SPLIT, `theme=dark; ${sent}`)).version, 'legacy', 'another instance believes the cookie')
  assert.equal((await send(b.url, 'GET', '/orders', SPLIT)).version, 'migrated', 'and without it knows nothing')
  assert.equal((await send(a.url, 'GET', '/orders', SPLIT)).version, 'legacy', 'the instance that took the write remembers without a cookie')
  assert.equal((await send(b.url, 'GET', '/orders', NEITHER, sent)).version, 'legacy')
  assert.equal((await send(b.url, 'GET', '/orders', OTHER_SPLIT, sent)).version, 'migrated', 'another user\'s cookie means nothing')

  const forged = sent.replace(/\.[A-Za-z0-9_-]+$/, `.${'A'.repeat(43)}`)
  assert.equal((await send(b.url, 'GET', '/orders', SPLIT, forged)).version, 'migrated', 'a forged cookie is ignored')

  // After the window (2000 ms), the cookie has expired and the marker lapsed: reads are back on migrated.
  a.clock.now += 2_001
  b.clock.now += 2_001
  assert.equal((await send(b.url, 'GET', '/orders', SPLIT, sent)).version, 'migrated', 'an expired cookie is ignored')
  assert.equal((await send(a.url, 'GET', '/orders', SPLIT)).version, 'migrated')

  // Only the split cohort is marked: a user whose writes are migrated reads from migrated anyway.
  const both = await send(a.url, 'POST', '/orders', BOTH)
  assert.deepEqual([both.version, both.setCookie.filter((c) => c.startsWith('dbshift_ryw='))], ['migrated', []])
})

test('every spelling of a path lands on the same route; what cannot be normalised is refused with 400 and never forwarded', async (t) => {
  const { a, legacy, migrated } = await setup(t)
  const user = userIn(2000, 5000) // reports: legacy (20%); elsewhere: migrated (50%)
  for (const spelling of ['/reports/q', '//reports//q', '/%72eports/q', '/x/../reports/q', '/./reports/q', '/reports/q/', '/reports/q?x=1']) {
    assert.equal((await send(a.url, 'GET', spelling, user)).version, 'legacy', spelling)
  }
  assert.equal((await send(a.url, 'GET', '/Reports/q', user)).version, 'migrated', 'paths are case-sensitive')
  const forwarded = legacy.requests.length + migrated.requests.length
  for (const spelling of ['/reports%2Fq', '/reports/..%2F..%2Fadmin', '/a%00b', '/a%5Cb', '/..', '/../reports/q']) {
    const refused = await send(a.url, 'GET', spelling, user)
    assert.equal(refused.status, 400, spelling)
    assert.equal((JSON.parse(refused.body) as { error: string }).error, 'DBSHIFT_ERR_BAD_REQUEST', spelling)
  }
  assert.equal(legacy.requests.length + migrated.requests.length, forwarded, 'nothing refused reached an upstream')
  const refusedBad = (await a.app.metrics.refused.get()).values.find((v) => v.labels.reason === 'bad_request')?.value
  assert.equal(refusedBad, 6)
})

test('dbshift_route_requests_total counts each request under its configured route, version and class', async (t) => {
  const { a } = await setup(t)
  await send(a.url, 'GET', '/static/a.js', BOTH)
  await send(a.url, 'POST', '/orders', SPLIT)
  await send(a.url, 'GET', '/reports/q', BOTH)
  await send(a.url, 'GET', '/reports/q', BOTH)
  const values = (await a.app.metrics.routeRequests.get()).values
  const count = (route: string, version: string, cls: string): number | undefined =>
    values.find((v) => v.labels.route === route && v.labels.version === version && v.labels.class === cls)?.value
  assert.equal(count('static', 'legacy', 'read'), 1)
  assert.equal(count('default', 'legacy', 'write'), 1)
  assert.equal(count('reports', 'migrated', 'read'), 2)
  assert.ok(values.every((v) => ['default', ...ROUTES.map((r) => r.name)].includes(String(v.labels.route))), 'route names come from the config only')
})

test('without a cookie secret no cookie is set and the marker still holds on the instance that took the write', async (t) => {
  const { a, b } = await setup(t, { cookieSecret: undefined })
  const write = await send(a.url, 'POST', '/orders', SPLIT)
  assert.deepEqual(write.setCookie, [])
  assert.equal((await send(a.url, 'GET', '/orders', SPLIT)).version, 'legacy')
  assert.equal((await send(b.url, 'GET', '/orders', SPLIT)).version, 'migrated')
})
