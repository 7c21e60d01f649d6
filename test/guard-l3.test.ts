import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test, type TestContext } from 'node:test'
import { gzipSync } from 'node:zlib'
import { compareAnswers, compileIgnore, type Answer } from '../src/guards/compare.ts'
import { getAs, nextGuardEvent, startProxy, startRedis, startUpstream, testConfig, type TestProxy, type TestRedis } from './helpers.ts'

/** A rollout name of this file's own: its keys cannot meet any other test's. */
const ROLLOUT = 'guard-l3'

/** Resolves after `count` shadow comparisons, with their results. */
async function shadows (proxy: TestProxy, count: number): Promise<string[]> {
  const results: string[] = []
  await nextGuardEvent(proxy.app, 'shadow', (result) => { results.push(result); return results.length === count })
  return results
}

function json (res: ServerResponse, status: number, body: unknown, spacing?: number): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' })
  res.end(JSON.stringify(body, null, spacing))
}

interface Webhook {
  url: string
  calls: Array<{ body: Record<string, unknown>, key: string | undefined }>
  /** Status codes to answer, in order; 200 once they run out. */
  answers: number[]
  delivered: Promise<void>
}

async function startWebhook (t: TestContext, answers: number[] = []): Promise<Webhook> {
  const calls: Webhook['calls'] = []
  let deliver: () => void = () => {}
  const delivered = new Promise<void>((resolve) => { deliver = resolve })
  const server = await startUpstream(t, 'webhook', (req, res) => {
    let text = ''
    req.on('data', (chunk: Buffer) => { text += chunk.toString() })
    req.on('end', () => {
      calls.push({ body: JSON.parse(text) as Record<string, unknown>, key: req.headers['idempotency-key'] as string | undefined })
      const status = answers.shift() ?? 200
      res.writeHead(status).end()
      if (status === 200) deliver()
    })
  })
  return { url: `${server.url}/hooks/data-rollback`, calls, answers, delivered }
}

interface Setup {
  redis: TestRedis
  proxy: TestProxy
  migrated: { mode: 'same' | 'different' | 'hold', shadowRequests: IncomingMessage[], held: ServerResponse[], arrived: Array<() => void> }
}

/** Percent 0: users are served by legacy, and sampled requests are shadowed to migrated. */
async function setup (t: TestContext, l3: Record<string, unknown>): Promise<Setup> {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    json(res, 200, { id: 1, total: 10, items: [{ sku: 'a', updatedAt: Date.now() }], generatedAt: new Date().toISOString() })
  })
  const state: Setup['migrated'] = { mode: 'same', shadowRequests: [], held: [], arrived: [] }
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    if (req.headers['x-dbshift-shadow'] !== undefined) state.shadowRequests.push(req)
    state.arrived.shift()?.()
    if (state.mode === 'hold' && req.headers['x-dbshift-shadow'] !== undefined) {
      state.held.push(res)
      return
    }
    // Same data, keys in another order, other spacing and other timestamps: still a match.
    const total = state.mode === 'same' ? 10 : 11
    json(res, 200, { generatedAt: 'later', items: [{ updatedAt: 0, sku: 'a' }], total, id: 1 }, 2)
  })
  const config = testConfig(redis.url, legacy.url, migrated.url, {
    instanceId: 'i0',
    rollout: { name: ROLLOUT },
    guards: {
      signalPollIntervalMs: 100,
      l1: { enabled: false },
      l2: { enabled: false },
      l3: { enabled: true, sampleRate: 1, minComparisons: 5, mismatchRate: 0.2, windowMs: 60_000, ignorePaths: ['generatedAt', 'items.*.updatedAt'], ...l3 }
    }
  })
  const proxy = await startProxy(t, config)
  return { redis, proxy, migrated: state }
}

test('matching answers never trip; mismatches past the threshold roll back and call the webhook, retried', async (t) => {
  const webhook = await startWebhook(t, [503])
  const { redis, proxy, migrated } = await setup(t, { webhookUrl: webhook.url, webhookRetries: 2, webhookTimeoutMs: 1_000 })

  const matched = shadows(proxy, 6)
  for (let i = 0; i < 6; i++) assert.equal((await getAs(proxy.url, `user-${i}`, '/orders/1')).version, 'legacy')
  assert.deepEqual(await matched, Array(6).fill('match'), 'JSON compared structurally, without the ignored paths')
  assert.equal(proxy.app.sync.current.rolledBack, false)

  migrated.mode = 'different'
  const tripped = nextGuardEvent(proxy.app, 'trip')
  const called = nextGuardEvent(proxy.app, 'webhook')
  for (let i = 0; !proxy.app.sync.current.rolledBack && i < 50; i++) await getAs(proxy.url, `other-${i}`, '/orders/1')
  const [trip, outcome] = await tripped
  assert.equal(outcome, 'tripped')
  assert.equal(trip.level, 'L3')
  assert.match(trip.reason, /2 of 8 shadow comparisons mismatched/)
  const [result] = await called
  assert.deepEqual({ ok: result.ok, attempts: result.attempts }, { ok: true, attempts: 2 })
  await webhook.delivered
  assert.equal(webhook.calls.length, 2, 'the 503 was retried')
  assert.equal(webhook.calls[0]?.key, webhook.calls[1]?.key, 'a retry carries the same idempotency key')
  // The fence id: the data-rollback job writes it to signal:data_restored to lift the fence on the cohort's writes.
  const fence = await redis.client.hget(`dbshift:{${ROLLOUT}}:fence`, 'id')
  assert.deepEqual(webhook.calls[1]?.body, { event: 'rollback', rollout: ROLLOUT, level: 'L3', reason: trip.reason, at: trip.at, by: 'i0', fence })

  assert.equal(await redis.client.get(`dbshift:{${ROLLOUT}}:state`), 'rolled_back')
  assert.equal((await redis.client.hgetall(`dbshift:{${ROLLOUT}}:trip`)).level, 'L3')
  const counted = Object.fromEntries((await proxy.app.metrics.shadow.get()).values.map((v) => [v.labels.result, v.value]))
  assert.equal(counted.match, 6)
  assert.ok((counted.mismatch ?? 0) >= 2, 'shadows already under way when it tripped are still counted')
  assert.ok(proxy.logs.some((line) => line.msg === 'shadow comparison: the versions answered differently' && line.where === 'total'))
})

test('the shadow request never changes the user\'s answer, and only safe requests are shadowed', async (t) => {
  const { proxy, migrated } = await setup(t, {})
  migrated.mode = 'hold' // the other version does not answer the shadow copies at all until the test lets it
  const first = new Promise<void>((resolve) => migrated.arrived.push(resolve))
  const direct = await getAs(proxy.url, 'alice', '/orders/1')
  await first
  const arrived = new Promise<void>((resolve) => migrated.arrived.push(resolve))
  const answer = await fetch(`${proxy.url}/orders/1`, { headers: { 'x-user-id': 'alice', 'x-request-id': 'r-1' } })
  const body = await answer.json() as Record<string, unknown>
  // The user has the whole answer while the shadow copy is still unanswered.
  await arrived
  assert.equal(migrated.held.length, 2)
  assert.equal(answer.status, 200)
  assert.equal(answer.headers.get('x-dbshift-version'), 'legacy')
  assert.deepEqual(Object.keys(body), Object.keys(direct.body))
  assert.equal(body.total, 10)
  const shadow = migrated.shadowRequests[1] as IncomingMessage
  assert.equal(shadow.headers['x-dbshift-version'], 'migrated')
  assert.equal(shadow.headers['x-request-id'], 'r-1')
  assert.equal(shadow.method, 'GET')

  // The held copies fail badly: the users never see it, the comparison counts it.
  const compared = shadows(proxy, 2)
  for (const res of migrated.held) json(res, 500, { error: 'boom' })
  assert.deepEqual(await compared, ['mismatch', 'mismatch'])

  // A write is never sent twice.
  migrated.mode = 'same'
  const posted = await fetch(`${proxy.url}/orders`, { method: 'POST', headers: { 'x-user-id': 'alice', 'content-type': 'application/json' }, body: '{"total":1}' })
  assert.equal(posted.status, 200)
  await posted.arrayBuffer()
  const next = shadows(proxy, 1)
  await getAs(proxy.url, 'alice', '/orders/1')
  await next
  assert.deepEqual(migrated.shadowRequests.map((req) => req.method), ['GET', 'GET', 'GET'])
})

test('the external inconsistency signal rolls back at once and calls the webhook', async (t) => {
  const webhook = await startWebhook(t)
  const { redis, proxy } = await setup(t, { webhookUrl: webhook.url, sampleRate: 0 })
  await redis.client.set(`dbshift:{${ROLLOUT}}:signal:inconsistent`, '0')
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(`dbshift:{${ROLLOUT}}:signal:inconsistent`) === '0')
  assert.equal(proxy.app.sync.current.rolledBack, false, '0 means consistent')

  const tripped = nextGuardEvent(proxy.app, 'trip')
  await redis.client.set(`dbshift:{${ROLLOUT}}:signal:inconsistent`, 'orders: 12 rows differ')
  const [trip] = await tripped
  assert.equal(trip.level, 'L3')
  assert.match(trip.reason, /signal:inconsistent = "orders: 12 rows differ"/)
  assert.equal((await getAs(proxy.url, 'alice')).version, 'legacy')
  await webhook.delivered
  assert.equal(webhook.calls[0]?.body.level, 'L3')
})

test('L3 in dry run counts and logs mismatches that would have tripped, and acts on none', async (t) => {
  const webhook = await startWebhook(t)
  const { proxy, migrated } = await setup(t, { dryRun: true, webhookUrl: webhook.url, minComparisons: 3 })
  migrated.mode = 'different'
  const wouldHave = nextGuardEvent(proxy.app, 'dryRun')
  for (let i = 0; i < 3; i++) await getAs(proxy.url, `user-${i}`, '/orders/1')
  const [level] = await wouldHave
  assert.equal(level, 'L3')
  assert.equal(proxy.app.sync.current.rolledBack, false)
  assert.equal(webhook.calls.length, 0)
  assert.equal((await proxy.app.metrics.guardDryRuns.get()).values.find((v) => v.labels.level === 'L3')?.value, 1)
})

test('comparison rules: status first, JSON by structure without ignored paths, other bodies by bytes, encodings undone', async () => {
  const answer = (body: string | Buffer, status = 200, contentType = 'application/json', contentEncoding = ''): Answer =>
    ({ status, contentType, contentEncoding, body: Buffer.isBuffer(body) ? body : Buffer.from(body) })
  const ignore = compileIgnore(['meta.at', 'rows.*.seen', '$.etag'])
  const cases: Array<[string, Answer, Answer, boolean, string?]> = [
    ['key order and spacing', answer('{"a":1,"b":[1,2]}'), answer('{ "b": [1, 2], "a": 1 }'), true],
    ['ignored paths, with wildcards', answer('{"meta":{"at":1},"rows":[{"id":1,"seen":5}],"etag":"x"}'), answer('{"meta":{"at":2},"rows":[{"id":1,"seen":6}],"etag":"y"}'), true],
    ['a changed value', answer('{"rows":[{"id":1,"total":5}]}'), answer('{"rows":[{"id":1,"total":6}]}'), false, 'rows.0.total'],
    ['a missing item', answer('[1,2,3]'), answer('[1,2]'), false, '2'],
    ['status', answer('{}', 200), answer('{}', 404), false, 'status'],
    ['text by bytes', answer('hello', 200, 'text/plain'), answer('hello', 200, 'text/plain'), true],
    ['text that differs', answer('hello', 200, 'text/plain'), answer('hullo', 200, 'text/plain'), false, 'body'],
    ['gzip on one side only', answer(gzipSync('{"a":1}'), 200, 'application/json', 'gzip'), answer('{"a":1}'), true]
  ]
  for (const [name, a, b, match, where] of cases) {
    const result = await compareAnswers(a, b, ignore, 'GET')
    assert.equal(result.match, match, name)
    if (where !== undefined) assert.equal(result.where, where, name)
  }
  assert.equal((await compareAnswers(answer('a'), answer('b'), ignore, 'HEAD')).match, true, 'HEAD compares the status only')
})
