import assert from 'node:assert/strict'
import { test } from 'node:test'
import { nextGuardEvent, startRedis, startUpstream, untilRollout } from './helpers.ts'
import { adminCall, dbshift, keysOf, metric, startWayBackProxy, wayBackConfig } from './way-back-helpers.ts'

test('the declared way back: set through the API and the command, audited, read into every instance, shown with its verdict', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const rollout = 'wb-declared'
  const k = keysOf(rollout)
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout))

  // Missing key: dual write, a rollback is safe.
  let status = await adminCall(proxy.adminUrl, 'GET', '/way-back')
  assert.equal(status.body.mode, 'dual_write')
  assert.equal(status.body.rollbackSafe, true)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_way_back{mode="dual_write"}'), 1)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_rollback_safe'), 1)

  // PUT /way-back: through the command layer, audited, announced, in force here at once.
  const put = await adminCall(proxy.adminUrl, 'PUT', '/way-back', { mode: 'reverse_sync', reason: 'migrated writes only its own tables now' })
  assert.equal(put.status, 200, JSON.stringify(put.body))
  assert.deepEqual(put.body, { mode: 'reverse_sync', previous: 'dual_write', changed: true })
  assert.equal(proxy.app.sync.current.wayBack, 'reverse_sync')
  assert.equal(await redis.client.get(k.wayBack), 'reverse_sync')
  const [[, fields]] = await redis.client.xrevrange(k.audit, '+', '-', 'COUNT', 1) as Array<[string, string[]]>
  assert.deepEqual(fields.slice(0, 6), ['at', fields[1], 'action', 'way_back', 'old', 'dual_write'])
  assert.ok(fields.includes('reverse_sync') && fields.includes('migrated writes only its own tables now'))
  const again = await adminCall(proxy.adminUrl, 'PUT', '/way-back', { mode: 'reverse_sync' })
  assert.equal(again.body.changed, false)
  assert.equal((await adminCall(proxy.adminUrl, 'PUT', '/way-back', { mode: 'sideways' })).status, 400)

  // No reading of the reverse lag yet: not safe, and why.
  await nextGuardEvent(proxy.app, 'signals')
  status = await adminCall(proxy.adminUrl, 'GET', '/status')
  const wayBack = status.body.wayBack as Record<string, unknown>
  assert.equal(wayBack.mode, 'reverse_sync')
  assert.equal(wayBack.rollbackSafe, false)
  assert.match(String(wayBack.why), /reverse lag unknown/)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_rollback_safe'), 0)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_way_back{mode="reverse_sync"}'), 1)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_way_back{mode="dual_write"}'), 0)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_reverse_lag_seconds'), Number.NaN)

  // A reading: safe, with the lag in words and in the gauge.
  await redis.client.set(k.reverseLagSignal, '0.4', 'EX', 15)
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === '0.4')
  status = await adminCall(proxy.adminUrl, 'GET', '/way-back')
  assert.equal(status.body.rollbackSafe, true)
  assert.equal(status.body.why, 'reverse sync 0.4 s behind')
  const lag = await metric(proxy.adminUrl, 'dbshift_reverse_lag_seconds') as number
  assert.ok(lag >= 0.4 && lag < 2, `lag as of now ${lag}`)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_rollback_safe'), 1)

  // The command: shows it, declares none; every instance follows.
  const shown = await dbshift(redis.url, rollout, 'way-back', '--json')
  assert.equal(shown.code, 0, shown.stderr)
  assert.equal(shown.json().mode, 'reverse_sync')
  assert.equal(shown.json().rollbackSafe, true)
  const none = await dbshift(redis.url, rollout, 'way-back', 'none', '--reason', 'the old schema is gone')
  assert.equal(none.code, 0, none.stderr)
  assert.match(none.stdout, /reverse_sync → none/)
  await untilRollout(proxy.app, (s) => s.wayBack === 'none')
  assert.equal((await adminCall(proxy.adminUrl, 'GET', '/way-back')).body.why, 'way back: none')
  const text = await dbshift(redis.url, rollout, 'status')
  assert.match(text.stdout, /way back {5}none: rollback NOT safe \(way back: none\)/)
  assert.equal((await dbshift(redis.url, rollout, 'way-back', 'sideways')).code, 2)

  // Back to dual_write deletes the key (its default).
  assert.equal((await dbshift(redis.url, rollout, 'way-back', 'dual_write')).code, 0)
  assert.equal(await redis.client.exists(k.wayBack), 0)
  await untilRollout(proxy.app, (s) => s.wayBack === 'dual_write')
})

test('an invalid way back in Redis is ignored, logged with key and value, and counted; the last valid mode stays', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const rollout = 'wb-invalid'
  const k = keysOf(rollout)
  await redis.client.set(k.wayBack, 'reverse_sync')
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout))
  assert.equal(proxy.app.sync.current.wayBack, 'reverse_sync')
  const before = await metric(proxy.adminUrl, 'dbshift_config_errors_total') as number

  await redis.client.set(k.wayBack, 'sometimes')
  await redis.client.set(k.reverseLagSignal, 'soon', 'EX', 15)
  await proxy.app.sync.refresh()
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === 'soon')
  assert.equal(proxy.app.sync.current.wayBack, 'reverse_sync')
  const logged = proxy.logs.filter((l) => l.key === k.wayBack && l.value === 'sometimes')
  assert.equal(logged.length, 1)
  assert.ok(proxy.logs.some((l) => l.key === k.reverseLagSignal && l.value === 'soon'))
  assert.equal(await metric(proxy.adminUrl, 'dbshift_config_errors_total'), before + 2)
  // Not on every poll: once.
  await proxy.app.sync.refresh()
  await nextGuardEvent(proxy.app, 'signals')
  assert.equal(await metric(proxy.adminUrl, 'dbshift_config_errors_total'), before + 2)
  assert.match(String((await adminCall(proxy.adminUrl, 'GET', '/way-back')).body.why), /reverse lag unknown/)
})
