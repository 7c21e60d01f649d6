import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { ServerResponse } from 'node:http'
import { Agent, request } from 'undici'
import { startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'

test('over server.maxInFlight, new requests get 503 with Retry-After at once; those admitted complete; it recovers', async (t) => {
  const redis = await startRedis(t)
  const held: ServerResponse[] = []
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    if (req.url === '/hold') held.push(res) // answered only when the test releases them
    else res.end('ok')
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { maxInFlight: 10 } }))
  const agent = new Agent({ connections: 100 })
  t.after(async () => await agent.close())

  // 10 slow requests fill the proxy; the upstream holds them.
  const admitted = Array.from({ length: 10 }, async () => await request(`${proxy.url}/hold`, { dispatcher: agent }))
  const deadline = Date.now() + 5_000
  while (held.length < 10 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  assert.equal(held.length, 10)

  // Ninety more are shed at once, without touching the upstream.
  const shed = await Promise.all(Array.from({ length: 90 }, async () => {
    const res = await request(`${proxy.url}/more`, { dispatcher: agent })
    const body = await res.body.json() as { error: string }
    return { status: res.statusCode, retryAfter: res.headers['retry-after'], error: body.error }
  }))
  for (const answer of shed) assert.deepEqual(answer, { status: 503, retryAfter: '1', error: 'DBSHIFT_ERR_OVERLOADED' })
  assert.equal(legacy.requests.filter((req) => req.url === '/more').length, 0)
  process.stdout.write('# fault "overload (maxInFlight 10, 100 concurrent)": admitted 10, shed 90 with 503\n')

  for (const res of held) res.end('done')
  for (const res of await Promise.all(admitted)) {
    assert.equal(res.statusCode, 200)
    assert.equal(await res.body.text(), 'done')
  }
  // The slots are free again.
  const after = await Promise.all(Array.from({ length: 10 }, async () => (await request(`${proxy.url}/again`, { dispatcher: agent })).statusCode))
  assert.deepEqual(after, Array(10).fill(200))
})
