import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream, untilRollout } from './helpers.ts'
import { metricValue, nextMemberChange, poolConfig, steadyTraffic } from './health-helpers.ts'

/** An upstream that answers /health 200 and everything else with its name, or 500 while `failing()`. */
function app (name: string, failing: () => boolean = () => false) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    req.resume()
    const status = req.url === '/health' ? 200 : failing() ? 500 : 200
    const body = JSON.stringify({ servedBy: name })
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body)
  }
}

test('a member killed under traffic is found by its health checks and steered around: no request fails', async (t) => {
  const redis = await startRedis(t)
  const one = await startUpstream(t, 'one', app('one'))
  const two = await startUpstream(t, 'two', app('two'))
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, poolConfig(redis.url, {
    legacy: { members: [one.url, two.url], healthCheck: { path: '/health', intervalMs: 100, timeoutMs: 200, unhealthyAfter: 2, healthyAfter: 1 }, outlier: { consecutiveErrors: 0 } },
    migrated: [migrated.url]
  }))
  const traffic = [steadyTraffic(proxy.url, 'lee', t), steadyTraffic(proxy.url, 'lou', t)]
  await Promise.all(traffic.map(async (loop) => await loop.until(20)))
  assert.ok(two.requests.length > 0 && one.requests.length > 0, 'both members served before the kill')

  const down = nextMemberChange(proxy.app, (version, change) => version === 'legacy' && change.member.name === two.url && !change.serving)
  await two.close()
  const change = await down
  assert.match(change.why, /2 health checks in a row failed/)
  const servedByTwo = two.requests.length
  await Promise.all(traffic.map(async (loop) => await loop.until(50)))
  await Promise.all(traffic.map(async (loop) => await loop.stop()))

  const answers = traffic.flatMap((loop) => loop.answers)
  assert.deepEqual(answers.filter((a) => a.status !== 200), [], 'no request failed')
  assert.equal(two.requests.length, servedByTwo)
  assert.equal(answers.slice(-40).every((a) => a.servedBy === 'one'), true)
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="legacy",member="${two.url}"}`), 0)
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="legacy",member="${one.url}"}`), 1)
  const lines = proxy.logs.filter((line) => line.member === two.url && line.healthy === false)
  assert.equal(lines.length, 1, 'the change is logged once')
  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as { pools: { legacy: Array<{ member: string, healthy: boolean, check: string }> } }
  assert.deepEqual(status.pools.legacy.map((m) => [m.member, m.healthy, m.check]), [[one.url, true, 'up'], [two.url, false, 'down']])
})

test('a member answering 500s is ejected after outlier.consecutiveErrors, gets nothing while ejected, and returns after ejectMs', async (t) => {
  const redis = await startRedis(t)
  let failing = true
  const good = await startUpstream(t, 'good', app('good'))
  const bad = await startUpstream(t, 'bad', app('bad', () => failing))
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, poolConfig(redis.url, {
    legacy: { members: [good.url, bad.url], outlier: { consecutiveErrors: 3, ejectMs: 500, maxEjectedPercent: 50 } },
    migrated: [migrated.url]
  }))
  const seen = { ejected: false }
  const ejection = nextMemberChange(proxy.app, (_v, change) => change.member.name === bad.url && !change.serving).then((change) => { seen.ejected = true; return change })
  for (let i = 0; i < 50 && !seen.ejected; i++) await getAs(proxy.url, 'lee')
  assert.match((await ejection).why, /3 errors in a row/)
  const back = nextMemberChange(proxy.app, (_v, change) => change.member.name === bad.url && change.serving)

  const before = bad.requests.length
  for (let i = 0; i < 20; i++) assert.equal((await getAs(proxy.url, 'lee')).body.servedBy, 'good')
  assert.equal(bad.requests.length, before, 'an ejected member gets no new request')
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="legacy",member="${bad.url}"}`), 0)

  failing = false
  await back
  const served = new Set<unknown>()
  for (let i = 0; i < 10; i++) served.add((await getAs(proxy.url, 'lee')).body.servedBy)
  assert.deepEqual([...served].sort(), ['bad', 'good'], 'the member takes requests again')
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="legacy",member="${bad.url}"}`), 1)
})

test('the last member that takes requests is never ejected, even when every member answers 500s', async (t) => {
  const redis = await startRedis(t)
  const a = await startUpstream(t, 'a', app('a', () => true))
  const b = await startUpstream(t, 'b', app('b', () => true))
  const solo = await startUpstream(t, 'solo', app('solo', () => true))
  const proxy = await startProxy(t, poolConfig(redis.url, {
    legacy: { members: [a.url, b.url], outlier: { consecutiveErrors: 2, ejectMs: 60_000, maxEjectedPercent: 100 } },
    migrated: { members: [solo.url], outlier: { consecutiveErrors: 2, ejectMs: 60_000, maxEjectedPercent: 100 } }
  }))
  const changes: string[] = []
  proxy.app.poolHealth.on('change', (version, change) => changes.push(`${version} ${change.member.name} ${String(change.serving)}`))
  for (let i = 0; i < 20; i++) assert.equal((await getAs(proxy.url, 'lee')).status, 500)
  assert.equal(changes.length, 1, `one of the two legacy members is ejected, not both: ${changes.join('; ')}`)
  const kept = changes[0]?.includes(a.url) === true ? b : a
  const before = kept.requests.length
  for (let i = 0; i < 5; i++) assert.equal((await getAs(proxy.url, 'lee')).status, 500)
  assert.equal(kept.requests.length, before + 5, 'the kept member takes every request')

  await redis.client.sadd('dbshift:{default}:allow', 'mia')
  await untilRollout(proxy.app, (s) => s.allow.has('mia'))
  for (let i = 0; i < 10; i++) assert.equal((await getAs(proxy.url, 'mia')).status, 500)
  assert.equal(solo.requests.length, 10, 'a pool\'s only member is never ejected')
  assert.equal(changes.length, 1)
  assert.equal(await metricValue(proxy.adminUrl, `dbshift_upstream_healthy{version="migrated",member="${solo.url}"}`), 1)
})
