import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test, type TestContext } from 'node:test'
import { getAs, nextGuardEvent, startRedis, startUpstream, untilRollout, type TestProxy, type TestRedis } from './helpers.ts'
import { adminCall, cohorts, dbshift, keysOf, metric, startWayBackProxy, wayBackConfig } from './way-back-helpers.ts'

/** A write through the proxy as a user; status, version, Retry-After and the body. */
async function writeAs (url: string, user: string, path = '/orders'): Promise<{ status: number, version: string | null, retryAfter: string | null, body: Record<string, unknown> }> {
  const res = await fetch(url + path, { method: 'POST', headers: { 'x-user-id': user, 'content-type': 'application/json' }, body: '{"sku":"a"}' })
  const text = await res.text()
  let body: Record<string, unknown> = {}
  try { body = JSON.parse(text) as Record<string, unknown> } catch { body = { text } }
  return { status: res.status, version: res.headers.get('x-dbshift-version'), retryAfter: res.headers.get('retry-after'), body }
}

interface Pool {
  url: string
  writes: string[]
  /** While set, a POST /slow is held until release() (a write in flight). */
  held: ServerResponse[]
  arrived: Promise<void>
  release: () => void
}

/** An upstream that records each write it received (user and path) and can hold /slow writes in flight. */
async function startPool (t: TestContext, name: string): Promise<Pool> {
  let arrive: () => void = () => {}
  const pool: Pool = {
    url: '',
    writes: [],
    held: [],
    arrived: new Promise<void>((resolve) => { arrive = resolve }),
    release: () => { for (const res of pool.held.splice(0)) res.end(JSON.stringify({ servedBy: name, done: true })) }
  }
  const upstream = await startUpstream(t, name, (req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    req.once('end', () => {
      if (!['GET', 'HEAD', 'OPTIONS'].includes(req.method ?? '')) pool.writes.push(`${String(req.headers['x-user-id'])} ${req.url ?? ''}`)
      res.writeHead(200, { 'content-type': 'application/json' })
      if (req.url === '/slow') {
        pool.held.push(res)
        res.flushHeaders()
        arrive()
        return
      }
      res.end(JSON.stringify({ servedBy: name }))
    })
  })
  pool.url = upstream.url
  return pool
}

interface Setup {
  redis: TestRedis
  legacy: Pool
  migrated: Pool
  proxy: TestProxy
  clock: { now: number }
  users: { migrated: string[], legacy: string[] }
}

const PERCENT = 50

/** reverse_sync at 50%, a fresh low reading, a clock of the test's own. */
async function setup (t: TestContext, rollout: string, wayBack: Record<string, unknown> = {}, redis?: TestRedis): Promise<Setup> {
  redis ??= await startRedis(t)
  const k = keysOf(rollout)
  await redis.client.set(k.wayBack, 'reverse_sync')
  await redis.client.set(k.percent, String(PERCENT))
  await redis.client.set(k.reverseLagSignal, '0.2', 'EX', 60)
  const legacy = await startPool(t, 'legacy')
  const migrated = await startPool(t, 'migrated')
  const clock = { now: Date.now() }
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout, { guards: { wayBack } }), () => clock.now)
  await nextGuardEvent(proxy.app, 'signals', () => proxy.app.guards.wayBack.verdict().ready)
  return { redis, legacy, migrated, proxy, clock, users: cohorts(proxy.app, PERCENT, 3) }
}

/** Sets the reverse lag and waits until this instance has seen it. */
async function lagReading (s: Setup, rollout: string, lag: string): Promise<void> {
  const k = keysOf(rollout)
  await s.redis.client.set(k.reverseLagSignal, lag, 'EX', 60)
  await nextGuardEvent(s.proxy.app, 'signals', (values) => values.get(k.reverseLagSignal) === lag)
}

test('fence, then flip: reads to legacy at once, writes 503 with Retry-After, legacy users untouched, writes in flight finish, lifted by a covering reading only', async (t) => {
  const rollout = 'wb-fence'
  const k = keysOf(rollout)
  const s = await setup(t, rollout)
  const { proxy, users } = s
  const [alice, bob] = users.migrated as [string, string]
  const [carol] = users.legacy as [string]
  assert.equal((await getAs(proxy.url, alice)).version, 'migrated')

  // A write of the cohort is in flight on migrated when the rollback comes.
  const inFlight = fetch(`${proxy.url}/slow`, { method: 'POST', headers: { 'x-user-id': bob }, body: 'x' })
  await s.migrated.arrived

  const rolledBack = await adminCall(proxy.adminUrl, 'POST', '/rollback', { reason: 'checkout errors' })
  assert.equal(rolledBack.status, 200, JSON.stringify(rolledBack.body))
  const fenceId = rolledBack.body.fence as string
  assert.match(fenceId, /\S+/)
  assert.equal(proxy.app.sync.current.fence?.id, fenceId)
  assert.equal(await s.redis.client.hget(k.fence, 'id'), fenceId)
  assert.equal(await s.redis.client.hget(k.fence, 'percent'), String(PERCENT))

  // Reads of the cohort: legacy, at once.
  const read = await getAs(proxy.url, alice)
  assert.deepEqual([read.status, read.version, read.body.servedBy], [200, 'legacy', 'legacy'])
  // Writes of the cohort: 503, Retry-After, never reaching an upstream.
  const fenced = await writeAs(proxy.url, alice)
  assert.equal(fenced.status, 503)
  assert.equal(fenced.body.error, 'DBSHIFT_ERR_WRITES_FENCED')
  assert.ok(Number(fenced.retryAfter) >= 1, `Retry-After ${String(fenced.retryAfter)}`)
  const statusOf = async (method: string): Promise<number> => {
    const res = await fetch(`${proxy.url}/orders/1`, { method, headers: { 'x-user-id': alice } })
    await res.arrayBuffer()
    return res.status
  }
  for (const method of ['PUT', 'DELETE', 'PATCH']) assert.equal(await statusOf(method), 503)
  for (const method of ['HEAD', 'OPTIONS']) assert.equal(await statusOf(method), 200)
  assert.ok(!s.legacy.writes.some((w) => w.startsWith(alice)) && !s.migrated.writes.some((w) => w.startsWith(alice)))
  // A user outside the cohort is never touched.
  const outside = await writeAs(proxy.url, carol)
  assert.deepEqual([outside.status, outside.version], [200, 'legacy'])
  assert.equal(await metric(proxy.adminUrl, 'dbshift_fenced_requests_total'), 4)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_writes_fenced'), 1)
  assert.equal(await metric(proxy.adminUrl, 'dbshift_requests_total{version="legacy",code="503"}'), undefined)

  // The write that was in flight finishes where it started.
  s.migrated.release()
  const finished = await inFlight
  assert.equal(finished.status, 200)
  assert.deepEqual(await finished.json(), { servedBy: 'migrated', done: true })

  // The reading in force was taken before the fence began: it does not lift it.
  s.clock.now += 1_000
  await nextGuardEvent(proxy.app, 'signals')
  await nextGuardEvent(proxy.app, 'signals')
  assert.equal(proxy.app.sync.current.fence?.id, fenceId)
  // A reading taken after the fence, but 30 s behind: the reverse sync has not reached the fence moment.
  await lagReading(s, rollout, '30')
  await nextGuardEvent(proxy.app, 'signals')
  assert.equal(proxy.app.sync.current.fence?.id, fenceId)
  assert.equal((await writeAs(proxy.url, alice)).status, 503)

  // A reading taken after the fence that shows the reverse sync past it: lifted, fleet-wide.
  const lifted = nextGuardEvent(proxy.app, 'fence', (what, id) => what === 'released' && id === fenceId)
  await s.redis.client.set(k.reverseLagSignal, '0.5', 'EX', 60)
  const [, , how] = await lifted
  assert.equal(how, 'caught_up')
  await untilRollout(proxy.app, (snapshot) => snapshot.fence === undefined)
  assert.equal(await s.redis.client.exists(k.fence), 0)
  const after = await writeAs(proxy.url, alice)
  assert.deepEqual([after.status, after.version], [200, 'legacy'])
  assert.ok(s.legacy.writes.includes(`${alice} /orders`), JSON.stringify(s.legacy.writes))
  assert.equal(await metric(proxy.adminUrl, 'dbshift_writes_fenced'), 0)
  const actions = (await s.redis.client.xrange(k.audit, '-', '+')).map(([, f]) => f[f.indexOf('action') + 1])
  assert.deepEqual(actions.filter((a) => a !== undefined && ['rollback', 'fence', 'fence_release'].includes(a)), ['rollback', 'fence', 'fence_release'])
})

test('a fence times out: release lets writes through and counts them as unsafe; hold keeps them until an operator releases it', async (t) => {
  await t.test('release', async (t) => {
    const rollout = 'wb-timeout-release'
    const s = await setup(t, rollout, { fenceTimeoutMs: 5_000, onTimeout: 'release' })
    const alice = s.users.migrated[0] as string
    await s.redis.client.del(keysOf(rollout).reverseLagSignal)
    assert.equal((await adminCall(s.proxy.adminUrl, 'POST', '/rollback', {})).status, 200)
    assert.equal((await writeAs(s.proxy.url, alice)).status, 503)
    s.clock.now += 4_000
    await nextGuardEvent(s.proxy.app, 'signals')
    assert.notEqual(s.proxy.app.sync.current.fence, undefined)
    const lifted = nextGuardEvent(s.proxy.app, 'fence', (what) => what === 'released')
    s.clock.now += 1_500
    const [, , how] = await lifted
    assert.equal(how, 'timeout')
    await untilRollout(s.proxy.app, (snapshot) => snapshot.fence === undefined)
    assert.equal((await writeAs(s.proxy.url, alice)).status, 200)
    assert.equal(await metric(s.proxy.adminUrl, 'dbshift_rollback_unsafe_total'), 1)
    assert.ok(s.proxy.logs.some((l) => l.how === 'timeout' && l.level === 50))
  })

  await t.test('hold', async (t) => {
    const rollout = 'wb-timeout-hold'
    const k = keysOf(rollout)
    const s = await setup(t, rollout, { fenceTimeoutMs: 5_000, onTimeout: 'hold' })
    const alice = s.users.migrated[0] as string
    await s.redis.client.del(k.reverseLagSignal)
    assert.equal((await adminCall(s.proxy.adminUrl, 'POST', '/rollback', {})).status, 200)
    const held = nextGuardEvent(s.proxy.app, 'fence', (what) => what === 'held')
    s.clock.now += 6_000
    await held
    await untilRollout(s.proxy.app, (snapshot) => snapshot.fence?.held === true)
    await nextGuardEvent(s.proxy.app, 'signals')
    assert.equal((await writeAs(s.proxy.url, alice)).status, 503)
    assert.equal(await metric(s.proxy.adminUrl, 'dbshift_rollback_unsafe_total'), 0)
    const shown = await dbshift(s.redis.url, rollout, 'fence', '--json')
    assert.equal(shown.json().fenced, true)
    const released = await dbshift(s.redis.url, rollout, 'fence', 'release', '--reason', 'checked the orders by hand')
    assert.equal(released.code, 0, released.stderr)
    assert.match(released.stdout, /released/)
    await untilRollout(s.proxy.app, (snapshot) => snapshot.fence === undefined)
    assert.equal((await writeAs(s.proxy.url, alice)).status, 200)
    const entries = (await s.redis.client.xrange(k.audit, '-', '+')).map(([, f]) => f)
    assert.ok(entries.some((f) => f.includes('fence_hold')))
    assert.ok(entries.some((f) => f.includes('fence_release') && f.includes('operator') && f.includes('checked the orders by hand')))
    assert.equal((await adminCall(s.proxy.adminUrl, 'POST', '/fence/release', {})).body.released, false)
  })
})

test('a fence engaged with Redis down holds at once and is shared once Redis is back', async (t) => {
  const rollout = 'wb-offline'
  const k = keysOf(rollout)
  const s = await setup(t, rollout)
  const alice = s.users.migrated[0] as string
  await s.redis.stop()
  const rolledBack = await adminCall(s.proxy.adminUrl, 'POST', '/rollback', { reason: 'Redis is away and so is checkout' })
  assert.equal(rolledBack.status, 202)
  const fenceId = rolledBack.body.fence as string
  assert.match(fenceId, /\S+/)
  assert.equal((await getAs(s.proxy.url, alice)).version, 'legacy')
  assert.equal((await writeAs(s.proxy.url, alice)).status, 503)

  await s.redis.start()
  await untilRollout(s.proxy.app, () => !s.proxy.app.sync.rollbackPending, 10_000).catch(() => undefined)
  for (;;) {
    if (await s.redis.client.hget(k.fence, 'id').catch(() => null) === fenceId) break
    await new Promise((resolve) => s.proxy.app.sync.once('persisted', resolve))
  }
  assert.equal(await s.redis.client.hget(k.fence, 'percent'), String(PERCENT))
  // Another instance, started now, fences the same cohort.
  const other = await startWayBackProxy(t, wayBackConfig(s.redis.url, s.legacy.url, s.migrated.url, rollout))
  assert.equal(other.app.sync.current.fence?.id, fenceId)
  assert.equal((await writeAs(other.url, alice)).status, 503)
  assert.equal((await writeAs(other.url, s.users.legacy[0] as string)).status, 200)
})

test('three instances agree on one fence, and one covering reading lifts it for all', async (t) => {
  const rollout = 'wb-three'
  const k = keysOf(rollout)
  const s = await setup(t, rollout)
  const others = await Promise.all([1, 2].map(async () => await startWayBackProxy(t, wayBackConfig(s.redis.url, s.legacy.url, s.migrated.url, rollout), () => s.clock.now)))
  const all = [s.proxy, ...others]
  const alice = s.users.migrated[0] as string
  // All three roll back at once, each engaging its own fence locally.
  await Promise.all(all.map(async (p) => await adminCall(p.adminUrl, 'POST', '/rollback', { reason: `from ${p.adminUrl}` })))
  const fenceId = await s.redis.client.hget(k.fence, 'id')
  assert.ok(fenceId !== null)
  for (const p of all) {
    await untilRollout(p.app, (snapshot) => snapshot.fence?.id === fenceId)
    assert.equal((await writeAs(p.url, alice)).status, 503)
  }
  const entries = (await s.redis.client.xrange(k.audit, '-', '+')).map(([, f]) => f[f.indexOf('action') + 1])
  assert.equal(entries.filter((a) => a === 'fence').length, 1)
  assert.equal(entries.filter((a) => a === 'rollback').length, 1)

  s.clock.now += 1_000
  await s.redis.client.set(k.reverseLagSignal, '0.1', 'EX', 60)
  for (const p of all) await untilRollout(p.app, (snapshot) => snapshot.fence === undefined)
  for (const p of all) assert.equal((await writeAs(p.url, alice)).status, 200)
  const released = (await s.redis.client.xrange(k.audit, '-', '+')).filter(([, f]) => f.includes('fence_release'))
  assert.equal(released.length, 1)
})

test('a resume lifts the fence with the rollback: the cohort is back on migrated, which has its data', async (t) => {
  const rollout = 'wb-resume'
  const k = keysOf(rollout)
  const s = await setup(t, rollout)
  const alice = s.users.migrated[0] as string
  assert.equal((await adminCall(s.proxy.adminUrl, 'POST', '/rollback', {})).status, 200)
  assert.equal((await writeAs(s.proxy.url, alice)).status, 503)
  assert.equal((await adminCall(s.proxy.adminUrl, 'POST', '/resume', {})).status, 200)
  await untilRollout(s.proxy.app, (snapshot) => !snapshot.rolledBack && snapshot.fence === undefined)
  const write = await writeAs(s.proxy.url, alice)
  assert.deepEqual([write.status, write.version], [200, 'migrated'])
  assert.equal(await s.redis.client.exists(k.fence), 0)
  const released = (await s.redis.client.xrange(k.audit, '-', '+')).find(([, f]) => f.includes('fence_release'))
  assert.ok(released?.[1].includes('resume'))
})
