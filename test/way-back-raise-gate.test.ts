import assert from 'node:assert/strict'
import { test } from 'node:test'
import { nextGuardEvent, startRedis, startUpstream, untilRollout, type TestRedis } from './helpers.ts'
import { adminCall, dbshift, keysOf, startWayBackProxy, wayBackConfig } from './way-back-helpers.ts'

async function lastAudit (redis: TestRedis, key: string): Promise<Record<string, string>> {
  const [[, flat]] = await redis.client.xrevrange(key, '+', '-', 'COUNT', 1) as Array<[string, string[]]>
  const fields: Record<string, string> = {}
  for (let i = 0; i < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string
  return fields
}

test('in reverse_sync a raise is refused while the lag is unknown, stale or high, and allowed when fresh and low', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const rollout = 'wb-gate'
  const k = keysOf(rollout)
  let clock = Date.now()
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout), () => clock)
  const raise = async (percent: number): Promise<{ status: number, body: Record<string, unknown> }> => await adminCall(proxy.adminUrl, 'PUT', '/rollout', { percent })

  // dual_write: no reading needed.
  assert.equal((await raise(1)).status, 200)
  assert.equal((await adminCall(proxy.adminUrl, 'PUT', '/way-back', { mode: 'reverse_sync' })).status, 200)

  // Unknown: no reading at all.
  let refused = await raise(5)
  assert.equal(refused.status, 409)
  assert.equal(refused.body.error, 'DBSHIFT_ERR_WAY_BACK_NOT_READY')
  assert.match(String(refused.body.message), /reverse lag unknown/)
  assert.equal(await redis.client.get(k.percent), '1')
  const entry = await lastAudit(redis, k.audit)
  assert.equal(entry.action, 'set_percent_refused')
  assert.match(entry.reason ?? '', /the way back is not ready: reverse lag unknown/)
  const cli = await dbshift(redis.url, rollout, 'set', '5')
  assert.equal(cli.code, 3, cli.stderr)
  assert.match(cli.stderr, /the way back is not ready/)
  // Lowering always works.
  assert.equal((await raise(0.5)).status, 200)

  // High: a reading above the maximum (5 s in this test).
  await redis.client.set(k.reverseLagSignal, '12', 'EX', 30)
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === '12')
  refused = await raise(5)
  assert.equal(refused.status, 409)
  assert.match(String(refused.body.message), /reverse sync 12 s behind \(more than 5 s\)/)
  assert.equal((await dbshift(redis.url, rollout, 'set', '5')).code, 3)

  // Fresh and low.
  await redis.client.set(k.reverseLagSignal, '0.4', 'EX', 30)
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === '0.4')
  assert.equal((await raise(5)).status, 200)
  const viaCli = await dbshift(redis.url, rollout, 'set', '6')
  assert.equal(viaCli.code, 0, viaCli.stderr)

  // Stale: the same reading, seen 10 s ago, and nothing since.
  clock += 10_000
  refused = await raise(10)
  assert.equal(refused.status, 409)
  assert.match(String(refused.body.message), /no reading for 10 s/)
  assert.match(String((await adminCall(proxy.adminUrl, 'GET', '/way-back')).body.why), /no reading for 10 s/)

  // The same value written again: its TTL jumps back up, so it is a new reading.
  await nextGuardEvent(proxy.app, 'signals')
  await redis.client.set(k.reverseLagSignal, '0.4', 'EX', 30)
  await nextGuardEvent(proxy.app, 'signals', () => proxy.app.guards.wayBack.verdict().ready)
  assert.equal((await raise(10)).status, 200)

  // An expired reading is unknown again.
  await redis.client.del(k.reverseLagSignal)
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === null)
  assert.equal((await raise(20)).status, 409)
})

test('a ramp schedule waits for the way back (its bake restarts) instead of failing; a raise by hand is flagged', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const rollout = 'wb-ramp'
  const k = keysOf(rollout)
  await redis.client.set(k.wayBack, 'reverse_sync')
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout))

  const started = await adminCall(proxy.adminUrl, 'POST', '/schedule', { steps: [5, 10], bake: '1h' })
  assert.equal(started.status, 201, JSON.stringify(started.body))
  // The runner holds the schedule: no step, a note saying why, and the schedule still running.
  for (;;) {
    const { schedule } = (await adminCall(proxy.adminUrl, 'GET', '/schedule')).body as { schedule: Record<string, unknown> }
    if (String(schedule.note).startsWith('waiting for the way back')) {
      assert.equal(schedule.status, 'running')
      assert.equal(schedule.bakeFrom, null)
      break
    }
    await nextGuardEvent(proxy.app, 'signals')
  }
  assert.equal(await redis.client.get(k.percent), null)
  const audit = await redis.client.xrange(k.audit, '-', '+')
  assert.ok(audit.some(([, f]) => f.includes('schedule_hold') && f.some((v) => v.includes('waiting for the way back'))))

  // The lag becomes known and low: the first step is taken.
  await redis.client.set(k.reverseLagSignal, '0.2', 'EX', 30)
  await untilRollout(proxy.app, (s) => s.percent === 5, 10_000)

  // A raise by hand cannot be refused: it is flagged in the audit and in status.
  await redis.client.del(k.reverseLagSignal)
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === null)
  await redis.client.set(k.percent, '40')
  await untilRollout(proxy.app, (s) => s.percent === 40)
  for (;;) {
    const status = (await adminCall(proxy.adminUrl, 'GET', '/status')).body
    const hand = (status.wayBack as Record<string, unknown>).handRaise as Record<string, unknown> | null
    if (hand !== null) {
      assert.equal(hand.value, '40')
      assert.match(String(hand.warning), /raised by hand while the way back is not ready \(reverse lag unknown/)
      break
    }
    await nextGuardEvent(proxy.app, 'signals')
  }
  const entries = await redis.client.xrange(k.audit, '-', '+')
  const hand = entries.find(([, f]) => f.includes('hand_set'))
  assert.ok(hand !== undefined && hand[1].includes('way_back'), JSON.stringify(entries.map(([, f]) => f)))
  const shown = await dbshift(redis.url, rollout, 'status')
  assert.match(shown.stdout, /warning {6}percent set to 40 by hand: raised by hand while the way back is not ready/)
})

test('the reverse lag from a Prometheus query (guards.wayBack.lagQuery)', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  let sample = '0.3'
  const prometheus = await startUpstream(t, 'prometheus', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ status: 'success', data: { resultType: 'vector', result: [{ metric: {}, value: [Date.now() / 1000, sample] }] } }))
  })
  const rollout = 'wb-prom'
  await redis.client.set(keysOf(rollout).wayBack, 'reverse_sync')
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout, {
    guards: { wayBack: { lagQuery: `${prometheus.url}/api/v1/query?query=max(reverse_sync_lag_seconds)` } }
  }))
  await nextGuardEvent(proxy.app, 'signals')
  for (;;) {
    const body = (await adminCall(proxy.adminUrl, 'GET', '/way-back')).body
    if (body.why === 'reverse sync 0.3 s behind') {
      assert.equal(body.source, 'prometheus')
      break
    }
    await nextGuardEvent(proxy.app, 'signals')
  }
  assert.equal((await adminCall(proxy.adminUrl, 'PUT', '/rollout', { percent: 5 })).status, 200)
  sample = '90'
  await nextGuardEvent(proxy.app, 'signals', () => !proxy.app.guards.wayBack.verdict().ready)
  const refused = await adminCall(proxy.adminUrl, 'PUT', '/rollout', { percent: 10 })
  assert.equal(refused.status, 409)
  assert.match(String(refused.body.message), /reverse sync 90 s behind/)
})
