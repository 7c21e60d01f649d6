import assert from 'node:assert/strict'
import { once } from 'node:events'
import { request } from 'node:http'
import { test } from 'node:test'
import { freePort, startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy } from './helpers.ts'
import { promtool } from './prometheus/promtool.ts'

/**
 * The test's own Redis, emptied: redis-server loads a dump.rdb left in its working directory (the repository)
 * by another process, and this test counts on an empty one.
 */
async function freshRedis (t: Parameters<typeof startRedis>[0]): Promise<Awaited<ReturnType<typeof startRedis>>> {
  const redis = await startRedis(t)
  await redis.client.flushall()
  return redis
}

interface Sample { name: string, labels: Record<string, string>, value: number }

/** The samples of a Prometheus text exposition. */
function parseMetrics (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null) continue
    const labels: Record<string, string> = {}
    for (const [, name, value] of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[name as string] = value as string
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) })
  }
  return samples
}

async function scrape (proxy: TestProxy): Promise<{ text: string, samples: Sample[] }> {
  const res = await fetch(`${proxy.adminUrl}/metrics`)
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  const text = await res.text()
  return { text, samples: parseMetrics(text) }
}

/** The value of one series (0 when it does not exist), matching every label given. */
function value (samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} series`)
  return found[0]?.value ?? 0
}

/** Scrapes until `predicate` holds (an outside process changes state), failing after a deadline. */
async function scrapeUntil (proxy: TestProxy, predicate: (samples: Sample[]) => boolean, what: string, timeoutMs = 5_000): Promise<Sample[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { samples } = await scrape(proxy)
    if (predicate(samples)) return samples
    if (Date.now() > deadline) assert.fail(`metrics never showed ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

test('real traffic to both versions: requests, codes and latencies per version match what clients saw, and promtool accepts the output', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-type': 'text/plain' })
    res.end('legacy')
  })
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    res.writeHead(req.url === '/fail' ? 500 : 200, { 'content-type': 'text/plain' })
    res.end('migrated')
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  await redis.client.set('dbshift:{default}:percent', '50')
  await untilRollout(proxy.app, (s) => s.percent === 50)

  const seen = new Map<string, number>()
  for (let i = 0; i < 120; i++) {
    const path = i % 4 === 0 ? '/fail' : i % 5 === 0 ? '/missing' : '/orders'
    const res = await fetch(`${proxy.url}${path}`, { headers: i % 10 === 9 ? {} : { 'x-user-id': `user-${i}` } })
    await res.arrayBuffer()
    const key = `${String(res.headers.get('x-dbshift-version'))} ${res.status}`
    seen.set(key, (seen.get(key) ?? 0) + 1)
  }
  assert.ok((seen.get('migrated 500') ?? 0) > 0 && (seen.get('legacy 200') ?? 0) > 0 && (seen.get('legacy 404') ?? 0) > 0, JSON.stringify([...seen]))

  const { text, samples } = await scrape(proxy)
  const requests = samples.filter((s) => s.name === 'dbshift_requests_total')
  assert.deepEqual(
    new Map(requests.map((s) => [`${s.labels.version as string} ${s.labels.code as string}`, s.value])),
    seen, 'one series per version and status code, counting exactly what the clients received')
  for (const version of ['legacy', 'migrated']) {
    const sent = [...seen].filter(([key]) => key.startsWith(`${version} `)).reduce((sum, [, n]) => sum + n, 0)
    assert.equal(value(samples, 'dbshift_request_duration_seconds_count', { version }), sent, `${version}: one latency per request`)
    assert.equal(value(samples, 'dbshift_request_duration_seconds_bucket', { version, le: '+Inf' }), sent)
    assert.equal(value(samples, 'dbshift_request_duration_seconds_bucket', { version, le: '10' }), sent, 'loopback answers take well under 10 s')
    const buckets = samples.filter((s) => s.name === 'dbshift_request_duration_seconds_bucket' && s.labels.version === version)
    assert.equal(buckets[0]?.labels.le, '0.001', 'buckets start at 1 ms')
    for (let i = 1; i < buckets.length; i++) assert.ok((buckets[i] as Sample).value >= (buckets[i - 1] as Sample).value, 'buckets are cumulative')
    const sum = value(samples, 'dbshift_request_duration_seconds_sum', { version })
    assert.ok(sum > 0 && sum < sent, `${version}: latency sum ${sum} s for ${sent} loopback requests`)
  }
  assert.equal(value(samples, 'dbshift_rollout_percent'), 50)
  assert.equal(value(samples, 'dbshift_rolled_back'), 0)
  assert.equal(value(samples, 'dbshift_redis_up'), 1)
  assert.equal(value(samples, 'dbshift_config_errors_total'), 0)
  assert.equal(value(samples, 'dbshift_upstream_errors_total', { version: 'migrated', reason: 'refused' }), 0, 'error series exist from the start, at 0')
  assert.equal(value(samples, 'dbshift_guard_threshold', { level: 'L1' }), 0.05, 'the L1 threshold in force')
  assert.ok(samples.some((s) => s.name === 'process_cpu_seconds_total'), 'the process default metrics are there')
  assert.ok(samples.some((s) => s.name === 'nodejs_eventloop_lag_seconds'))

  const check = await promtool(['check', 'metrics'], text)
  assert.equal(check.code, 0, check.output)
  assert.equal(check.output.trim(), '', 'promtool has no lint remark either')

  // A second scrape adds only what happened in between.
  await (await fetch(`${proxy.url}/orders`)).arrayBuffer() // anonymous: legacy
  const again = (await scrape(proxy)).samples
  assert.equal(value(again, 'dbshift_requests_total', { version: 'legacy', code: '200' }), (seen.get('legacy 200') ?? 0) + 1)
  assert.equal(value(again, 'dbshift_requests_total', { version: 'migrated', code: '500' }), seen.get('migrated 500'))
})

test('upstream failures are labelled with the version and the reason: refused, reset, timeout', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    if (req.url === '/reset') return req.socket.destroy() // the connection dies before any answer
    if (req.url === '/hang') return // never answers
    res.end('ok')
  })
  const refused = `http://127.0.0.1:${await freePort()}` // nothing listens there
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, refused, { upstream: { headersTimeoutMs: 100, retries: 0 } }))
  await redis.client.sadd('dbshift:{default}:allow', 'tester')
  await untilRollout(proxy.app, (s) => s.allow.has('tester'))

  const statuses: number[] = []
  const send = async (path: string, user?: string, method = 'GET'): Promise<void> => {
    const res = await fetch(`${proxy.url}${path}`, { method, headers: user === undefined ? {} : { 'x-user-id': user } })
    await res.arrayBuffer()
    statuses.push(res.status)
  }
  for (let i = 0; i < 3; i++) await send('/orders', 'tester') // migrated: refused
  for (let i = 0; i < 2; i++) await send('/reset', undefined, 'POST') // legacy: reset (POST: not retried)
  await send('/hang') // legacy: timeout
  await send('/orders') // legacy: fine
  assert.deepEqual(statuses, [502, 502, 502, 502, 502, 504, 200])

  const { samples } = await scrape(proxy)
  const errors = samples.filter((s) => s.name === 'dbshift_upstream_errors_total' && s.value > 0)
    .map((s) => `${s.labels.version as string} ${s.labels.reason as string} ${s.value}`).sort()
  assert.deepEqual(errors, ['legacy reset 2', 'legacy timeout 1', 'migrated refused 3'])
  assert.equal(value(samples, 'dbshift_requests_total', { version: 'migrated', code: '502' }), 3)
  assert.equal(value(samples, 'dbshift_requests_total', { version: 'legacy', code: '502' }), 2)
  assert.equal(value(samples, 'dbshift_requests_total', { version: 'legacy', code: '504' }), 1)
  assert.equal(value(samples, 'dbshift_requests_total', { version: 'legacy', code: '200' }), 1)
})

test('a client that hangs up in the middle of an answer is not counted as an upstream error', async (t) => {
  const redis = await freshRedis(t)
  let upstreamSocketClosed: Promise<void> | undefined
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    upstreamSocketClosed = new Promise((resolve) => req.socket.once('close', () => resolve()))
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.write('first part of a long answer') // the rest never comes while the client is there
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))

  await new Promise<void>((resolve, reject) => {
    const req = request(`${proxy.url}/stream`, (res) => {
      res.once('data', () => {
        req.destroy() // the client leaves after the first bytes
        resolve()
      })
    })
    req.once('error', (err) => { if (!req.destroyed) reject(err) })
    req.end()
  })
  await upstreamSocketClosed // the proxy let go of the upstream request: the exchange is over

  const { samples } = await scrape(proxy)
  const upstreamErrors = samples.filter((s) => s.name === 'dbshift_upstream_errors_total').reduce((sum, s) => sum + s.value, 0)
  assert.equal(upstreamErrors, 0, 'the upstream did nothing wrong')
  assert.equal(value(samples, 'dbshift_requests_total', { version: 'legacy', code: '200' }), 1, 'counted under the status it was given')
  assert.deepEqual(proxy.app.traffic.totals('legacy', 60_000), { requests: 1, errors: 0 }, 'and the guards are not told it failed')
  assert.ok(proxy.logs.every((line) => line.msg !== 'upstream failed'))
})

test('the gauges follow Redis: percentage, rollback, invalid values (counted once each), Redis lost and back', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const token = 'a-test-admin-token-0123456789'
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token }, guards: { l1: { errorRate: 0.1 } } }))
  const app = proxy.app
  let samples = (await scrape(proxy)).samples
  assert.deepEqual([value(samples, 'dbshift_rollout_percent'), value(samples, 'dbshift_rolled_back'), value(samples, 'dbshift_redis_up')], [0, 0, 1])
  assert.equal(value(samples, 'dbshift_guard_threshold', { level: 'L1' }), 0.1, 'the configured L1 threshold')

  await redis.client.set('dbshift:{default}:percent', '20')
  await untilRollout(app, (s) => s.percent === 20)
  assert.equal(value((await scrape(proxy)).samples, 'dbshift_rollout_percent'), 20)

  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  await untilRollout(app, (s) => s.rolledBack)
  assert.equal(value((await scrape(proxy)).samples, 'dbshift_rolled_back'), 1)
  await redis.client.del('dbshift:{default}:state')
  await untilRollout(app, (s) => !s.rolledBack)
  assert.equal(value((await scrape(proxy)).samples, 'dbshift_rolled_back'), 0)

  // An invalid value: counted and logged once, however often it is read again; the last valid state stays.
  const invalid = once(app.sync, 'invalid')
  await redis.client.set('dbshift:{default}:percent', 'abc')
  await invalid
  await app.sync.refresh()
  await app.sync.refresh()
  samples = (await scrape(proxy)).samples
  assert.equal(value(samples, 'dbshift_config_errors_total'), 1)
  assert.equal(value(samples, 'dbshift_rollout_percent'), 20, 'the last valid percentage stays in force')
  const logged = proxy.logs.filter((line) => line.key === 'dbshift:{default}:percent' && line.value === 'abc')
  assert.equal(logged.length, 1, 'one log line naming the key and the value')
  assert.equal(logged[0]?.level, 50)
  // Another invalid value is another error.
  const second = once(app.sync, 'invalid')
  await redis.client.set('dbshift:{default}:percent', '150')
  await second
  assert.equal(value((await scrape(proxy)).samples, 'dbshift_config_errors_total'), 2)

  // A rollback through the admin API: the gauge at once, and a trip of level "manual".
  const rollback = await fetch(`${proxy.adminUrl}/rollback`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"reason":"test"}' })
  assert.equal(rollback.status, 200)
  samples = (await scrape(proxy)).samples
  assert.equal(value(samples, 'dbshift_rolled_back'), 1)
  assert.equal(value(samples, 'dbshift_guard_trips_total', { level: 'manual' }), 1)
  assert.equal(value(samples, 'dbshift_guard_trips_total', { level: 'L1' }), 0)

  // Redis stopped once the instance has written about the rollback (no write cut in half), and the instance
  // closed only once it listens to rollout events again.
  await until(async () => (await redis.client.hget('dbshift:{default}:instances', app.instanceId) ?? '').includes('rolled_back'), 'the heartbeat')
  await redis.stop()
  await scrapeUntil(proxy, (s) => value(s, 'dbshift_redis_up') === 0, 'dbshift_redis_up 0 after Redis stopped')
  await redis.start()
  await scrapeUntil(proxy, (s) => value(s, 'dbshift_redis_up') === 1, 'dbshift_redis_up 1 after Redis came back')
  await until(async () => (await redis.client.pubsub('NUMSUB', 'dbshift:{default}:events'))[1] === 1, 'the re-subscription')
})

/** Polls Redis until `check` holds, failing after a deadline. */
async function until (check: () => Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) assert.fail(`${what} never showed up in Redis`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('label values stay bounded whatever clients send and whatever status upstreams invent', async (t) => {
  const redis = await freshRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    const status = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('status') ?? 200)
    res.writeHead(status)
    res.end()
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))

  for (const status of [200, 299, 599, 799, 999]) {
    await (await fetch(`${proxy.url}/x?status=${status}`, { headers: { 'x-user-id': `"}evil{${status}`, 'x-dbshift-version': 'evil-version' } })).arrayBuffer()
  }
  const { text, samples } = await scrape(proxy)
  assert.ok(!text.includes('evil'), 'nothing a client sends becomes a label value')
  const codes = samples.filter((s) => s.name === 'dbshift_requests_total').map((s) => `${s.labels.version as string} ${s.labels.code as string} ${s.value}`).sort()
  assert.deepEqual(codes, ['legacy 200 1', 'legacy 299 1', 'legacy 599 1', 'legacy other 2'])
  const check = await promtool(['check', 'metrics'], text)
  assert.equal(check.code, 0, check.output)
})
