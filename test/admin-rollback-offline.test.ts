import assert from 'node:assert/strict'
import { once } from 'node:events'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const TOKEN = 'a-token-of-at-least-16-characters'
const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }

test('rollback is accepted while Redis is stopped, applies at once, and is persisted when Redis returns; moves toward migrated are refused', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { app, url, adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token: TOKEN, tokenName: 'oncall' } }))

  const set = await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers: auth, body: JSON.stringify({ percent: 100 }) })
  assert.equal(set.status, 200)
  await untilRollout(app, (s) => s.percent === 100)
  assert.equal((await getAs(url, 'alice')).version, 'migrated')

  const closed = new Promise((resolve) => app.redis.once('close', resolve)) // not events.once(): it rejects on the 'error' that comes first
  await redis.stop()
  await closed

  const rollback = await fetch(`${adminUrl}/rollback`, { method: 'POST', headers: auth, body: JSON.stringify({ reason: 'orders failing' }) })
  assert.equal(rollback.status, 202)
  assert.deepEqual(await rollback.json(), { state: 'rolled_back', persisted: false, message: 'rolled back on this instance; it is written to Redis as soon as Redis is reachable' })
  assert.equal((await getAs(url, 'alice')).version, 'legacy')
  const status = await (await fetch(`${adminUrl}/status`)).json() as { state: string, redis: { connected: boolean, rollbackPending: boolean } }
  assert.equal(status.state, 'rolled_back')
  assert.deepEqual([status.redis.connected, status.redis.rollbackPending], [false, true])

  for (const [method, path, body] of [['PUT', '/rollout', { percent: 50 }], ['POST', '/resume', {}]] as const) {
    const res = await fetch(adminUrl + path, { method, headers: auth, body: JSON.stringify(body) })
    assert.equal(res.status, 503, path)
    const answer = await res.json() as { error: string, message: string }
    assert.equal(answer.error, 'DBSHIFT_ERR_REDIS_UNAVAILABLE')
    assert.match(answer.message, /needs Redis/)
  }

  const persisted = once(app.sync, 'persisted')
  await redis.start()
  await persisted
  assert.equal(await redis.client.get('dbshift:{default}:state'), 'rolled_back')
  const trip = await redis.client.hgetall('dbshift:{default}:trip')
  assert.equal(trip.level, 'manual')
  assert.equal(trip.reason, 'orders failing')
  assert.equal(trip.by, 'oncall@127.0.0.1')
  const entries = await redis.client.xrange('dbshift:{default}:audit', '-', '+')
  const rollbacks = entries.map(([, flat]) => flat).filter((flat) => flat[flat.indexOf('action') + 1] === 'rollback')
  assert.equal(rollbacks.length, 1)
  assert.equal(rollbacks[0]?.[rollbacks[0].indexOf('source') + 1], 'api')
  assert.equal((await getAs(url, 'alice')).version, 'legacy')
})
