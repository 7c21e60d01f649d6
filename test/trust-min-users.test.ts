import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import { getAs, nextGuardEvent, startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy } from './helpers.ts'

const ROLLOUT = 'trust-users'
/** Fast windows; the default guards.l1.minUsers (10). */
const L1 = { fastWindowMs: 2_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 60_000, minRequests: 100, errorRate: 0.05, evaluateIntervalMs: 100 }

/** A migrated pool that answers 500 to everything, behind one instance at 100%. */
async function failingMigrated (t: TestContext): Promise<TestProxy> {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => { req.resume(); res.writeHead(500).end('bad input') })
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '100')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: ROLLOUT }, guards: { l1: L1, l2: { enabled: false } } }))
  await untilRollout(proxy.app, (s) => s.percent === 100)
  return proxy
}

test('one user key failing 100 times does not trip L1: the failures come from one user', async (t) => {
  const proxy = await failingMigrated(t)
  for (let i = 0; i < 100; i++) assert.equal((await getAs(proxy.url, 'mallory')).status, 500)
  const [evaluation] = await nextGuardEvent(proxy.app, 'evaluated', (e) => e.source === 'fleet' && e.totals.long.migrated.errors >= 100)
  assert.equal(evaluation.verdict.trip, false, evaluation.verdict.reason)
  assert.match(evaluation.verdict.reason, /from 1 distinct users of the 10 needed/)
  assert.deepEqual(evaluation.totals.failingUsers, { fast: 1, long: 1 })
  assert.equal(proxy.app.sync.current.state, 'active')
})

test('20 user keys failing trip L1', async (t) => {
  const proxy = await failingMigrated(t)
  const tripped = untilRollout(proxy.app, (s) => s.rolledBack, 10_000)
  for (let i = 0; i < 20 && !proxy.app.sync.current.rolledBack; i++) await getAs(proxy.url, `user-${i}`)
  const snapshot = await tripped
  assert.equal(snapshot.trip?.level, 'L1')
  assert.match(snapshot.trip?.reason ?? '', /from (1\d|20) users/)
})

test('anonymous failures count by address: behind a trusted proxy, by the address it forwarded', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => { req.resume(); res.writeHead(500).end('bad input') })
  const start = async (trustedProxies: string[]): Promise<TestProxy> => {
    const name = `${ROLLOUT}-anon-${trustedProxies.length}`
    await redis.client.set(`dbshift:{${name}}:percent`, '100')
    const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, {
      rollout: { name, anonymous: 'migrated' },
      server: { trustedProxies },
      guards: { l1: L1, l2: { enabled: false } }
    }))
    await untilRollout(proxy.app, (s) => s.percent === 100)
    return proxy
  }
  const send = async (proxy: TestProxy): Promise<void> => {
    for (let i = 0; i < 30 && !proxy.app.sync.current.rolledBack; i++) {
      await fetch(`${proxy.url}/x`, { headers: { 'x-forwarded-for': `198.51.100.${i}` } }).then(async (res) => await res.arrayBuffer())
    }
  }
  const untrusted = await start([])
  await send(untrusted)
  const [evaluation] = await nextGuardEvent(untrusted.app, 'evaluated', (e) => e.source === 'fleet' && e.totals.long.migrated.errors >= 30)
  assert.equal(evaluation.totals.failingUsers.long, 1, 'a client cannot invent addresses')
  assert.equal(untrusted.app.sync.current.rolledBack, false)

  const trusted = await start(['127.0.0.1'])
  const tripped = untilRollout(trusted.app, (s) => s.rolledBack, 10_000)
  await send(trusted)
  assert.equal((await tripped).trip?.level, 'L1')
})
