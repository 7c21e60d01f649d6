import assert from 'node:assert/strict'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

async function fleet (t: Parameters<typeof startRedis>[0], size: number) {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxies = []
  for (let i = 0; i < size; i++) proxies.push(await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { instanceId: `i${i}` })))
  return { redis, proxies }
}

test('three instances on one Redis all switch after one change, pushed or set by hand', async (t) => {
  const { redis, proxies } = await fleet(t, 3)
  const first = proxies[0]
  assert.ok(first !== undefined)

  // Through dbshift: the store's script publishes an event, every instance re-reads at once.
  await first.app.control.setPercent(40, { by: 'test', source: 'api' })
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.percent === 40)))
  // By hand: the poll notices.
  await redis.client.set('dbshift:{default}:percent', '100')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.percent === 100)))
  for (const p of proxies) assert.equal((await getAs(p.url, 'bob')).version, 'migrated')

  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.rolledBack)))
  for (const p of proxies) assert.equal((await getAs(p.url, 'bob')).version, 'legacy')
})

test('Redis stopped mid-traffic: no request fails, routing stays on the last state; Redis back: a new change arrives', async (t) => {
  const { redis, proxies } = await fleet(t, 1)
  const proxy = proxies[0]
  assert.ok(proxy !== undefined)
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(proxy.app, (s) => s.percent === 100)

  let sent = 0
  const failures: string[] = []
  const control = { stop: false }
  const traffic = (async () => {
    while (!control.stop) {
      const answer = await getAs(proxy.url, `user-${sent % 50}`).catch((err: Error) => ({ status: 0, version: err.message, body: {} }))
      sent++
      if (answer.status !== 200 || answer.version !== 'migrated') failures.push(`${answer.status} ${String(answer.version)}`)
    }
  })()
  const lost = new Promise<void>((resolve) => proxy.app.redis.once('close', () => resolve()))
  await redis.stop()
  await lost
  const duringOutage = sent
  // Keep serving well past the poll interval and the command timeout while Redis is down.
  await new Promise<void>((resolve) => {
    const check = (): void => { sent >= duringOutage + 200 ? resolve() : setImmediate(check) }
    check()
  })
  assert.equal(proxy.app.sync.current.percent, 100)

  control.stop = true
  await traffic
  assert.ok(sent >= duringOutage + 200, `${sent} requests sent`)
  assert.deepEqual(failures, [], `${failures.length} of ${sent} requests failed or changed version`)

  const back = new Promise<void>((resolve) => proxy.app.redis.once('ready', () => resolve()))
  await redis.start()
  await back
  await redis.client.set('dbshift:{default}:percent', '25')
  await untilRollout(proxy.app, (s) => s.percent === 25)
})

test('invalid values in every key are ignored, logged once with key and value, and counted', async (t) => {
  const { redis, proxies } = await fleet(t, 1)
  const proxy = proxies[0]
  assert.ok(proxy !== undefined)
  await redis.client.set('dbshift:{default}:percent', '20')
  await redis.client.sadd('dbshift:{default}:allow', 'tester')
  await untilRollout(proxy.app, (s) => s.percent === 20 && s.allow.has('tester'))
  const counted = async (): Promise<number> => (await proxy.app.metrics.configErrors.get()).values[0]?.value ?? 0

  for (const bad of ['abc', '150', '-1', '20.555', '']) {
    const before = await counted()
    await redis.client.set('dbshift:{default}:percent', bad)
    await proxy.app.sync.refresh()
    assert.equal(proxy.app.sync.current.percent, 20, `percent ${JSON.stringify(bad)} was not ignored`)
    assert.equal(await counted(), before + 1, `percent ${JSON.stringify(bad)} was not counted`)
    assert.ok(proxy.logs.some((line) => line.level === 50 && line.key === 'dbshift:{default}:percent' && line.value === bad), `no error logged for ${JSON.stringify(bad)}`)
  }
  // The same bad value seen again on the next polls is not counted again.
  const settled = await counted()
  await proxy.app.sync.refresh()
  await proxy.app.sync.refresh()
  assert.equal(await counted(), settled)

  await redis.client.set('dbshift:{default}:state', 'paused')
  await proxy.app.sync.refresh()
  assert.equal(proxy.app.sync.current.state, 'active')
  assert.ok(proxy.logs.some((line) => line.key === 'dbshift:{default}:state' && line.value === 'paused'))

  await redis.client.del('dbshift:{default}:allow')
  await redis.client.set('dbshift:{default}:allow', 'not-a-set')
  await redis.client.set('dbshift:{default}:trip', 'not-a-hash')
  await proxy.app.sync.refresh()
  assert.ok(proxy.logs.some((line) => line.key === 'dbshift:{default}:allow' && String(line.value).includes('wrong Redis type')))
  assert.ok(proxy.logs.some((line) => line.key === 'dbshift:{default}:trip'))
  assert.equal(proxy.app.sync.current.percent, 20)
  assert.equal(await counted(), settled + 3)

  await redis.client.set('dbshift:{default}:percent', '35.5')
  await untilRollout(proxy.app, (s) => s.percent === 35.5)
  assert.equal((await getAs(proxy.url, 'alice')).version, 'migrated')
})

test('a cold start without Redis serves the configured initial percentage, then catches up', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  await redis.client.set('dbshift:{default}:percent', '100')
  await redis.stop()
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { initialPercent: 0 } }))
  assert.equal((await getAs(proxy.url, 'bob')).version, 'legacy')
  const ready = await fetch(`${proxy.adminUrl}/readyz`)
  assert.equal(ready.status, 200)
  assert.equal(((await ready.json()) as { redis: string }).redis, 'disconnected')

  await redis.start()
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(proxy.app, (s) => s.percent === 100)
  assert.equal((await getAs(proxy.url, 'bob')).version, 'migrated')
})

test('a change pushed through dbshift arrives by pub/sub alone, and again after Redis restarts (re-subscribed)', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  // Polls far apart: only the subscription can bring the change in time.
  const slowPoll = { redis: { pollIntervalMs: 600_000, fullSyncIntervalMs: 600_000 } }
  const writer = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, slowPoll))
  const follower = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, slowPoll))

  await writer.app.control.setPercent(15, { by: 'test', source: 'api' })
  await untilRollout(follower.app, (s) => s.percent === 15)

  const resubscribed = new Promise<void>((resolve) => follower.app.sync.once('change', () => resolve()))
  await redis.stop()
  await redis.start()
  await resubscribed // the empty Redis is read on reconnect: back to the initial 0%
  assert.equal(follower.app.sync.current.percent, 0)
  if (writer.app.redis.status !== 'ready') await new Promise((resolve) => writer.app.redis.once('ready', resolve))
  await writer.app.control.setPercent(45, { by: 'test', source: 'api' })
  await untilRollout(follower.app, (s) => s.percent === 45)
})
