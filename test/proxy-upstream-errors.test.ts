import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test } from 'node:test'
import { freePort, getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

test('an upstream that refuses connections gives 502 naming the version, and the proxy keeps serving', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const refused = `http://127.0.0.1:${await freePort()}` // nothing listens there
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, refused))
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(proxy.app, (s) => s.percent === 100)

  const res = await fetch(`${proxy.url}/orders`, { method: 'POST', body: 'x', headers: { 'x-user-id': 'bob' } })
  assert.equal(res.status, 502)
  assert.equal(res.headers.get('x-dbshift-version'), 'migrated')
  assert.deepEqual(await res.json(), { error: 'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE', message: 'the migrated pool could not answer', version: 'migrated' })
  assert.equal((await getAs(proxy.url, undefined)).body.servedBy, 'legacy', 'never served by the other version, and still up')
  assert.ok(proxy.logs.some((line) => line.msg === 'upstream failed' && line.reason === 'refused' && line.version === 'migrated'))
})

test('an upstream that resets mid-response breaks that answer only; the next request is served', async (t) => {
  const redis = await startRedis(t)
  let calls = 0
  const flaky = await startUpstream(t, 'legacy', (req, res) => {
    calls++
    if (req.url === '/reset') {
      res.writeHead(200, { 'content-length': 1000 })
      res.write('partial')
      setImmediate(() => res.socket?.destroy())
      return
    }
    res.end('fine')
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, flaky.url, migrated.url))

  const outcome = await new Promise<string>((resolve) => {
    request(`${proxy.url}/reset`, (res) => {
      assert.equal(res.statusCode, 200)
      res.on('data', () => {})
      res.on('end', () => resolve('complete'))
      res.on('aborted', () => resolve('aborted'))
      res.on('error', () => resolve('aborted'))
    }).on('error', () => resolve('request error')).end()
  })
  assert.notEqual(outcome, 'complete', 'a truncated upstream answer must not look complete to the client')
  assert.equal(calls, 1, 'a request whose answer had started is not retried')
  const next = await fetch(`${proxy.url}/ok`)
  assert.equal(await next.text(), 'fine')
})

test('an upstream that never answers gives 504 after upstream.headersTimeoutMs', async (t) => {
  const redis = await startRedis(t)
  const silent = await startUpstream(t, 'legacy', () => {}) // accepts, never answers
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, silent.url, migrated.url, { upstream: { headersTimeoutMs: 200 } }))
  const res = await fetch(`${proxy.url}/slow`, { method: 'POST', body: 'x' })
  assert.equal(res.status, 504)
  assert.deepEqual(await res.json(), { error: 'DBSHIFT_ERR_UPSTREAM_TIMEOUT', message: 'the legacy pool did not answer in time', version: 'legacy' })
  // Even an idempotent request is not sent again after a timeout: the upstream may be working on it.
  const get = await fetch(`${proxy.url}/slow-get`)
  assert.equal(get.status, 504)
  assert.equal(silent.requests.filter((req) => req.url === '/slow-get').length, 1)
})

test('with one member of a pool down, idempotent requests are retried on another member of the same pool', async (t) => {
  const redis = await startRedis(t)
  const alive = await startUpstream(t, 'legacy-a')
  const dead = `http://127.0.0.1:${await freePort()}`
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, [dead, alive.url], migrated.url))
  for (let i = 0; i < 30; i++) {
    const answer = await getAs(proxy.url, `user-${i}`)
    assert.equal(answer.status, 200, `request ${i}`)
    assert.equal(answer.body.servedBy, 'legacy-a')
  }
  assert.equal(migrated.requests.length, 0, 'nothing went to the other version')
})

test('a request target fastify cannot route gets the same JSON 400 as every other refusal', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  const answer = await new Promise<{ status: number | undefined, body: string }>((resolve, reject) => {
    request(`${proxy.url}/%`, (res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => { body += chunk.toString() })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject).end()
  })
  assert.equal(answer.status, 400)
  assert.equal((JSON.parse(answer.body) as { error: string }).error, 'DBSHIFT_ERR_BAD_REQUEST')
  assert.equal(legacy.requests.length + migrated.requests.length, 0)
})
