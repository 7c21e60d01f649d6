import assert from 'node:assert/strict'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

/**
 * The test's own Redis, emptied: redis-server loads a dump.rdb left in its working directory (the repository)
 * by another process, and this test counts on an empty one.
 */
async function freshRedis (t: Parameters<typeof startRedis>[0]): Promise<Awaited<ReturnType<typeof startRedis>>> {
  const redis = await startRedis(t)
  await redis.client.flushall()
  return redis
}

async function getJson (url: string): Promise<{ status: number, body: Record<string, any> }> {
  const res = await fetch(url)
  return { status: res.status, body: await res.json() as Record<string, any> }
}

test('/healthz, /readyz and /status: rollout, state, trip, Redis, and per-version rate and error rate over the last minute', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    res.writeHead(req.url === '/fail' ? 500 : 200)
    res.end()
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: 'checkout' } }))
  await redis.client.set('dbshift:{checkout}:percent', '5')
  await redis.client.sadd('dbshift:{checkout}:allow', 'tester')
  await untilRollout(proxy.app, (s) => s.percent === 5 && s.allow.has('tester'))

  assert.deepEqual(await getJson(`${proxy.adminUrl}/healthz`), { status: 200, body: { status: 'ok' } })
  const ready = await getJson(`${proxy.adminUrl}/readyz`)
  assert.equal(ready.status, 200)
  assert.equal(ready.body.status, 'ready')
  assert.equal(ready.body.redis, 'connected')

  for (let i = 0; i < 12; i++) assert.equal((await getAs(proxy.url, undefined)).version, 'legacy')
  for (let i = 0; i < 6; i++) assert.equal((await getAs(proxy.url, 'tester', '/orders')).version, 'migrated')
  for (let i = 0; i < 2; i++) assert.equal((await getAs(proxy.url, 'tester', '/fail')).status, 500)

  let status = (await getJson(`${proxy.adminUrl}/status`)).body
  assert.equal(status.rollout, 'checkout')
  assert.equal(status.percent, 5)
  assert.equal(status.state, 'active')
  assert.equal(status.trip, null)
  assert.equal(status.redis.connected, true)
  assert.equal(status.traffic.windowSeconds, 60)
  assert.deepEqual(status.traffic.legacy, { requestsPerSecond: 0.2, errorRate: 0, requests: 12, errors: 0 })
  assert.deepEqual(status.traffic.migrated, { requestsPerSecond: 0.1333, errorRate: 0.25, requests: 8, errors: 2 })

  // A rollback written by hand (as another instance's guard would): state and trip show up.
  await redis.client.hset('dbshift:{checkout}:trip', { level: 'L1', reason: 'migrated error rate 25%', at: '2026-01-01T00:00:00.000Z', by: 'other-instance' })
  await redis.client.set('dbshift:{checkout}:state', 'rolled_back')
  await untilRollout(proxy.app, (s) => s.rolledBack)
  status = (await getJson(`${proxy.adminUrl}/status`)).body
  assert.equal(status.state, 'rolled_back')
  assert.deepEqual(status.trip, { level: 'L1', reason: 'migrated error rate 25%', at: '2026-01-01T00:00:00.000Z', by: 'other-instance' })

  // Redis gone: still ready (routing goes on with the last valid state), and says so. (Stopped once the
  // instance has finished writing about the change, so that no write is cut in half.)
  await until(async () => (await redis.client.hget('dbshift:{checkout}:instances', proxy.app.instanceId) ?? '').includes('rolled_back'), 'the heartbeat')
  await until(async () => (await redis.client.xrange('dbshift:{checkout}:audit', '-', '+')).some(([, fields]) => fields.includes('rolled_back')), 'the audit entry')
  const closed = new Promise((resolve) => proxy.app.redis.once('close', resolve)) // not once(): an 'error' comes first
  await redis.stop()
  await closed
  const stillReady = await getJson(`${proxy.adminUrl}/readyz`)
  assert.equal(stillReady.status, 200)
  assert.equal(stillReady.body.status, 'ready')
  assert.equal(stillReady.body.redis, 'disconnected')
  assert.equal(typeof stillReady.body.lastSyncAt, 'string', 'when it last read Redis')
  status = (await getJson(`${proxy.adminUrl}/status`)).body
  assert.equal(status.redis.connected, false)
  assert.equal(status.state, 'rolled_back', 'the last valid state')
  assert.equal((await getAs(proxy.url, 'tester')).version, 'legacy', 'and the proxy routes on it')

  // Redis back: connected again.
  const ready2 = new Promise((resolve) => proxy.app.redis.once('ready', resolve))
  await redis.start()
  await ready2
  assert.equal((await getJson(`${proxy.adminUrl}/readyz`)).body.redis, 'connected')
  // Closed only once the instance listens to rollout events again (closing during that would cut it short).
  await until(async () => (await redis.client.pubsub('NUMSUB', 'dbshift:{checkout}:events'))[1] === 1, 'the re-subscription')
})

/** Polls an outside process (Redis) until `check` holds, failing after a deadline. */
async function until (check: () => Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) assert.fail(`${what} never showed up in Redis`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
