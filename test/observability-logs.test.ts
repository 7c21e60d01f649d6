import assert from 'node:assert/strict'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

/** The test's own Redis, emptied (redis-server loads a dump.rdb another process may have left in the repository). */
async function freshRedis (t: Parameters<typeof startRedis>[0]): Promise<Awaited<ReturnType<typeof startRedis>>> {
  const redis = await startRedis(t)
  await redis.client.flushall()
  return redis
}

test('log.requests: one JSON line per proxied request with version, why, upstream, status and duration', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (_req, res) => {
    res.writeHead(503)
    res.end()
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { log: { requests: 'info' } }))
  await redis.client.set('dbshift:{default}:percent', '10') // alice (bucket 698) is migrated, bob (7528) is not
  await redis.client.sadd('dbshift:{default}:allow', 'tester')
  await redis.client.sadd('dbshift:{default}:deny', 'alice')
  await untilRollout(proxy.app, (s) => s.percent === 10 && s.allow.has('tester') && s.deny.has('alice'))

  const sent: Array<[string | undefined, string, number]> = [[undefined, 'anonymous', 200], ['bob', 'bucket', 200], ['user-42', 'bucket', 200], ['tester', 'allow', 503], ['alice', 'deny', 200]]
  for (const [user] of sent) await getAs(proxy.url, user, '/orders?id=7')
  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  await untilRollout(proxy.app, (s) => s.rolledBack)
  await getAs(proxy.url, 'tester', '/orders?id=7')
  sent.push(['tester', 'rolled_back', 200])

  const lines = proxy.logs.filter((line) => line.msg === 'request')
  assert.equal(lines.length, sent.length, 'one line per request')
  sent.forEach(([user, why, status], i) => {
    const line = lines[i] as Record<string, unknown>
    assert.equal(line.level, 30, 'at the configured level (info)')
    assert.equal(line.why, why)
    assert.equal(line.user, user)
    assert.equal(line.status, status)
    assert.equal(line.version, status === 503 ? 'migrated' : 'legacy')
    assert.equal(line.upstream, status === 503 ? migrated.url : legacy.url)
    assert.equal(line.method, 'GET')
    assert.equal(line.url, '/orders', 'without the query string (tokens travel there)')
    assert.equal(typeof line.durationMs, 'number')
    assert.ok((line.durationMs as number) >= 0 && (line.durationMs as number) < 5_000)
    assert.equal(typeof line.time, 'number')
  })
  assert.equal(lines.find((line) => line.user === 'bob')?.bucket, 7528, 'the bucket that decided it')
})

test('by default (log.requests: silent) no line is written per request', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  const before = proxy.logs.length
  for (let i = 0; i < 20; i++) assert.equal((await getAs(proxy.url, `u${i}`)).status, 200)
  const perRequest = proxy.logs.slice(before).filter((line) => line.msg === 'request' || line.url !== undefined || line.user !== undefined)
  assert.deepEqual(perRequest, [], 'nothing is logged for plain traffic')
})

test('each rollout change is logged once with its values, and each invalid value once with its key and value, never per request', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  const app = proxy.app

  await redis.client.set('dbshift:{default}:percent', '20')
  await untilRollout(app, (s) => s.percent === 20)
  await redis.client.set('dbshift:{default}:state', 'bogus')
  const invalid = new Promise((resolve) => app.sync.once('invalid', resolve))
  await invalid
  for (let i = 0; i < 30; i++) await getAs(proxy.url, `u${i}`)
  await app.sync.refresh() // read again: still invalid, still one line
  await app.sync.refresh()
  await redis.client.set('dbshift:{default}:percent', '25')
  await untilRollout(app, (s) => s.percent === 25)
  for (let i = 0; i < 30; i++) await getAs(proxy.url, `u${i}`)

  const changes = proxy.logs.filter((line) => line.msg === 'rollout state changed')
  assert.deepEqual(changes.map((line) => [line.percent, line.state, (line.previous as { percent: number }).percent]), [[20, 'active', 0], [25, 'active', 20]])
  assert.ok(changes.every((line) => line.level === 30))
  const errors = proxy.logs.filter((line) => typeof line.msg === 'string' && line.msg.startsWith('ignored an invalid value in Redis'))
  assert.equal(errors.length, 1)
  assert.equal(errors[0]?.key, 'dbshift:{default}:state')
  assert.equal(errors[0]?.value, 'bogus')
  assert.equal(errors[0]?.level, 50)
  assert.match(String(errors[0]?.msg), /keeping the last valid state/)
})
