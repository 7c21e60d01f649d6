import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { captureLogs, getAs, startRedis, startUpstream } from './helpers.ts'
import { configFile, metricValue, nextMemberChange, startReloadable, steadyTraffic } from './health-helpers.ts'

const TOKEN = 'a-token-of-sixteen-characters'

function base (redisUrl: string, legacy: unknown, migrated: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { listen: '127.0.0.1:0', adminListen: '127.0.0.1:0', admin: { token: TOKEN }, pools: { legacy, migrated }, redis: { url: redisUrl, pollIntervalMs: 100, fullSyncIntervalMs: 500, commandTimeoutMs: 500 }, ...extra }
}

test('a reload under continuous traffic moves legacy to a new member: no request fails, one in flight finishes on the old member', async (t) => {
  const redis = await startRedis(t)
  const held: Array<() => void> = []
  const named = (name: string) => (req: IncomingMessage, res: ServerResponse): void => {
    req.resume()
    const answer = (): void => { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ servedBy: name })) }
    if (req.url === '/slow') held.push(answer)
    else answer()
  }
  const before = await startUpstream(t, 'before', named('before'))
  const after = await startUpstream(t, 'after', named('after'))
  const migrated = await startUpstream(t, 'migrated')
  const { log } = captureLogs()
  const file = configFile(t, base(redis.url, [before.url], [migrated.url]))
  const proxy = await startReloadable(t, file.path, log)

  const traffic = [steadyTraffic(proxy.url, 'lee', t), steadyTraffic(proxy.url, 'lou', t)]
  await Promise.all(traffic.map(async (loop) => await loop.until(20)))
  const arrived = new Promise<void>((resolve) => { before.server.once('request', () => { setImmediate(resolve) }) })
  const slow = getAs(proxy.url, 'lee', '/slow')
  await arrived

  proxy.write(base(redis.url, { members: [after.url] }, [migrated.url]))
  const result = await proxy.app.reload()
  assert.deepEqual(result, { ok: true, changed: ['pools.legacy.members'] })
  await Promise.all(traffic.map(async (loop) => await loop.until(10)))
  const mark = traffic.map((loop) => loop.answers.length)
  await Promise.all(traffic.map(async (loop) => await loop.until(30)))
  const servedBefore = before.requests.length
  for (const release of held.splice(0)) release()
  const slowAnswer = await slow
  await Promise.all(traffic.map(async (loop) => await loop.stop()))

  assert.equal(slowAnswer.status, 200)
  assert.equal(slowAnswer.body.servedBy, 'before', 'the request in flight finished where it started')
  const answers = traffic.flatMap((loop) => loop.answers)
  assert.deepEqual(answers.filter((a) => a.status !== 200), [], 'no request failed')
  traffic.forEach((loop, i) => assert.equal(loop.answers.slice(mark[i]).every((a) => a.servedBy === 'after'), true))
  assert.equal(before.requests.length, servedBefore, 'the old member gets nothing new')
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="legacy",member="${after.url}"}`), 1)
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="legacy",member="${before.url}"}`), undefined, 'the series of a member that is gone is removed')
})

test('a bad reload is kept out whole: one line names the key, the failure is counted, the running configuration stays', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const other = await startUpstream(t, 'other')
  const migrated = await startUpstream(t, 'migrated')
  const { log, lines } = captureLogs()
  const good = base(redis.url, [legacy.url], [migrated.url])
  const file = configFile(t, good)
  const proxy = await startReloadable(t, file.path, log)
  const metric = 'dbshift_config_reload_failures_total'
  assert.equal(await metricValue(proxy.adminUrl, metric), 0)

  proxy.write(base(redis.url, [other.url], { members: ['ftp://nowhere'] }))
  const invalid = await proxy.app.reload()
  assert.equal(invalid.ok, false)
  assert.match(invalid.ok ? '' : invalid.error, /pools\.migrated\.members\.0 = "ftp:\/\/nowhere": must be an http:\/\/ or https:\/\/ base URL/)
  const logged = lines.filter((line) => String(line.msg).startsWith('reload refused'))
  assert.equal(logged.length, 1)
  assert.match(String(logged[0]?.msg), /pools\.migrated\.members\.0/)
  assert.equal((await getAs(proxy.url, 'lee')).body.servedBy, 'legacy', 'the valid part of a bad file is not applied either')

  proxy.write({ ...base(redis.url, [other.url], [migrated.url]), rollout: { name: 'another', strategy: 'tail' } })
  const fixed = await proxy.app.reload()
  assert.match(fixed.ok ? '' : fixed.error, /^invalid configuration: rollout\.name, rollout\.salt, rollout\.strategy: cannot change while running/)

  proxy.write({ ...base(redis.url, [other.url], [migrated.url]), server: { maxInFlight: 5 } })
  const restart = await proxy.app.reload()
  assert.match(restart.ok ? '' : restart.error, /server\.maxInFlight: a reload does not apply this key; restart/)

  const res = await fetch(`${proxy.adminUrl}/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })
  assert.equal(res.status, 400)
  assert.equal((await res.json() as { error: string }).error, 'DBSHIFT_ERR_CONFIG')
  assert.equal((await fetch(`${proxy.adminUrl}/reload`, { method: 'POST' })).status, 401, 'POST /reload needs the token')

  assert.equal(await metricValue(proxy.adminUrl, metric), 4)
  assert.equal((await getAs(proxy.url, 'lee')).body.servedBy, 'legacy')
  assert.equal(proxy.app.config.rollout.name, 'default')
})

test('a reload changes a guard threshold and the log level', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const { log, lines } = captureLogs('info')
  const file = configFile(t, base(redis.url, [legacy.url], [migrated.url], { log: { level: 'info' } }))
  const proxy = await startReloadable(t, file.path, log)
  assert.equal(await metricValue(proxy.adminUrl, 'dbshift_guard_threshold{level="L1"}'), 0.05)

  proxy.write(base(redis.url, [legacy.url], [migrated.url], { log: { level: 'debug' }, guards: { l1: { errorRate: 0.2, unhealthyPoolMs: 2000 } } }))
  const res = await fetch(`${proxy.adminUrl}/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })
  assert.equal(res.status, 200)
  assert.deepEqual(((await res.json()) as { changed: string[] }).changed.sort(), ['guards.l1.errorRate', 'guards.l1.unhealthyPoolMs', 'log.level'])
  assert.equal(await metricValue(proxy.adminUrl, 'dbshift_guard_threshold{level="L1"}'), 0.2)
  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as { guards: { config: { l1: { errorRate: number, unhealthyPoolMs: number } } } }
  assert.equal(status.guards.config.l1.errorRate, 0.2)
  assert.equal(status.guards.config.l1.unhealthyPoolMs, 2000)
  assert.equal(log.level, 'debug')
  const debugBefore = lines.filter((line) => line.level === 20).length
  log.debug('a debug line') // what every part of dbshift logs through
  assert.equal(lines.filter((line) => line.level === 20).length, debugBefore + 1)
})

test('a migrated pool that is down stays down across a reload that keeps its member: no raise slips through', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const other = await startUpstream(t, 'other')
  const migrated = await startUpstream(t, 'migrated', (req, res) => { req.resume(); res.writeHead(req.url === '/health' ? 503 : 200).end('{}') })
  const { log } = captureLogs()
  const pool = { members: [migrated.url], healthCheck: { path: '/health', intervalMs: 100, unhealthyAfter: 1, healthyAfter: 1 } }
  const file = configFile(t, base(redis.url, [legacy.url], pool))
  const proxy = await startReloadable(t, file.path, log)
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && !change.serving)

  proxy.write(base(redis.url, [other.url], pool))
  assert.equal((await proxy.app.reload()).ok, true)
  assert.equal(proxy.app.poolHealth.migratedHealthy(), false, 'the new pool starts as its checks left the member')
  const res = await fetch(`${proxy.adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"percent":5}' })
  assert.equal(res.status, 409)
})

test('a reload of upstream.preserveHost applies to the next request; upstream.queueTimeoutMs needs a restart', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ servedBy: 'legacy', host: req.headers.host })) })
  const migrated = await startUpstream(t, 'migrated')
  const { log } = captureLogs()
  const file = configFile(t, base(redis.url, [legacy.url], [migrated.url]))
  const proxy = await startReloadable(t, file.path, log)
  const proxyHost = new URL(proxy.url).host
  assert.equal((await getAs(proxy.url, 'lee')).body.host, proxyHost, 'the client\'s Host by default')

  proxy.write(base(redis.url, [legacy.url], [migrated.url], { upstream: { preserveHost: false } }))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['upstream.preserveHost'] })
  assert.equal((await getAs(proxy.url, 'lee')).body.host, new URL(legacy.url).host, 'the member\'s own Host after the reload')

  proxy.write(base(redis.url, [legacy.url], [migrated.url], { upstream: { preserveHost: false, queueTimeoutMs: 500 } }))
  const refused = await proxy.app.reload()
  assert.match(refused.ok ? '' : refused.error, /upstream\.queueTimeoutMs: a reload does not apply this key; restart/)
})
