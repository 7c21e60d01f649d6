import assert from 'node:assert/strict'
import { test } from 'node:test'
import { captureLogs, getAs, startRedis, startUpstream, untilRollout } from './helpers.ts'
import { configFile, metricValue, startReloadable, steadyTraffic } from './health-helpers.ts'

const TOKEN = 'a-token-of-sixteen-characters'

function base (redisUrl: string, legacy: string, migrated: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { rollout, ...rest } = extra
  return {
    listen: '127.0.0.1:0',
    adminListen: '127.0.0.1:0',
    admin: { token: TOKEN },
    pools: { legacy: [legacy], migrated: [migrated] },
    rollout: { initialPercent: 100, ...(rollout as object | undefined) },
    redis: { url: redisUrl, pollIntervalMs: 100, fullSyncIntervalMs: 500, commandTimeoutMs: 500 },
    ...rest
  }
}

test('a reload under traffic that adds a legacy route moves that path to legacy: no request fails, other paths stay', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const { log } = captureLogs()
  const file = configFile(t, base(redis.url, legacy.url, migrated.url))
  const proxy = await startReloadable(t, file.path, log)

  const reports = steadyTraffic(proxy.url, 'lee', t, '/reports/daily')
  const orders = steadyTraffic(proxy.url, 'lou', t, '/orders/7')
  await Promise.all([reports.until(20), orders.until(20)])
  assert.equal(reports.answers.every((a) => a.servedBy === 'migrated'), true, 'at 100% everyone is on migrated')

  proxy.write(base(redis.url, legacy.url, migrated.url, { routes: [{ name: 'reports', path: '/reports/**', mode: 'legacy' }] }))
  const result = await proxy.app.reload()
  assert.deepEqual(result, { ok: true, changed: ['routes'] })
  const mark = reports.answers.length + 1 // an answer may be on its way back from before the swap
  await Promise.all([reports.until(30), orders.until(30)])
  await Promise.all([reports.stop(), orders.stop()])

  assert.deepEqual([...reports.answers, ...orders.answers].filter((a) => a.status !== 200), [], 'no request failed')
  assert.deepEqual([...new Set(reports.answers.slice(mark).map((a) => a.servedBy))], ['legacy'], 'the route\'s requests moved to legacy')
  assert.deepEqual([...new Set(orders.answers.map((a) => a.servedBy))], ['migrated'], 'a path on no route stays where it was')
  assert.ok((await metricValue(proxy.adminUrl, 'dbshift_route_requests_total{route="reports",version="legacy",class="read"}') ?? 0) >= 30, 'the new route has its series')
  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as { routes: Array<{ name: string, mode: string }> }
  assert.deepEqual(status.routes.map((route) => [route.name, route.mode]), [['reports', 'legacy']])
  const which = await (await fetch(`${proxy.adminUrl}/which/lee`)).json() as { routes: Array<{ route: string, reads: { version: string } }> }
  assert.deepEqual(which.routes.map((route) => [route.route, route.reads.version]), [['default', 'migrated'], ['reports', 'legacy']], '/which explains the reloaded routes')

  // A route added by a reload splits by a dial of its own (writes held on legacy, reads of reports too).
  proxy.write(base(redis.url, legacy.url, migrated.url, { routes: [{ name: 'reports', path: '/reports/**', mode: 'split' }] }))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['routes'] })
  const dial = await fetch(`${proxy.adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"writePercent":0,"routes":{"reports":0}}' })
  assert.equal(dial.status, 200, 'a route added by a reload can be given a dial of its own')
  await untilRollout(proxy.app, (snapshot) => snapshot.routePercent.get('reports') === 0)
  assert.equal((await getAs(proxy.url, 'lee', '/reports/daily')).body.servedBy, 'legacy', 'its dial (0%) is read')
  assert.equal((await getAs(proxy.url, 'lee', '/orders/7')).body.servedBy, 'migrated')

  // A bad route is refused whole, by its key: the routes in force stay.
  proxy.write(base(redis.url, legacy.url, migrated.url, { routes: [{ name: 'reports', path: '/reports/**', mode: 'legacy' }, { name: 'bad', path: 'orders/*', mode: 'legacy' }] }))
  const refused = await proxy.app.reload()
  assert.match(refused.ok ? '' : refused.error, /routes\.1\.path = "orders\/\*": must start with "\/"/)
  assert.equal((await getAs(proxy.url, 'lee', '/reports/daily')).body.servedBy, 'legacy', 'the split route and its dial still hold')
  assert.equal((await getAs(proxy.url, 'lee', '/orders/7')).body.servedBy, 'migrated')
})

test('a reload turns read-your-writes on and changes its window; the names that cannot change are still refused', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const { log } = captureLogs()
  const off = { rollout: { readYourWritesMs: 0 } }
  const file = configFile(t, base(redis.url, legacy.url, migrated.url, off))
  const proxy = await startReloadable(t, file.path, log)
  // Reads on migrated, writes on legacy: the split cohort.
  const dial = await fetch(`${proxy.adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"writePercent":0}' })
  assert.equal(dial.status, 200)
  const writeThenRead = async (user: string): Promise<unknown> => {
    const write = await fetch(`${proxy.url}/orders`, { method: 'POST', headers: { 'x-user-id': user }, body: '{}' })
    assert.equal((await write.json() as { servedBy: string }).servedBy, 'legacy')
    return (await getAs(proxy.url, user, '/orders')).body.servedBy
  }
  assert.equal(await writeThenRead('ann'), 'migrated', 'read-your-writes is off')

  proxy.write(base(redis.url, legacy.url, migrated.url, { rollout: { readYourWritesMs: 60_000 } }))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['rollout.readYourWritesMs'] })
  assert.equal(await writeThenRead('bob'), 'legacy', 'a read right after a write stays on legacy')
  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as { readYourWrites: { windowMs: number } }
  assert.equal(status.readYourWrites.windowMs, 60_000)

  proxy.write(base(redis.url, legacy.url, migrated.url, { rollout: { readYourWritesMs: 30_000 } }))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['rollout.readYourWritesMs'] })
  assert.equal((await getAs(proxy.url, 'bob', '/orders')).body.servedBy, 'legacy', 'a changed window keeps the writes already marked')

  proxy.write(base(redis.url, legacy.url, migrated.url, { listen: '127.0.0.1:1', rollout: { readYourWritesMs: 30_000, salt: 'another' } }))
  const refused = await proxy.app.reload()
  assert.match(refused.ok ? '' : refused.error, /listen, rollout\.salt: cannot change while running/)
})
