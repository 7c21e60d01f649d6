import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect } from 'node:net'
import { test } from 'node:test'
import { freePort, startProxy, startRedis, startUpstream, testConfig, type TestProxy } from './helpers.ts'

async function rawStatus (url: string, request: string): Promise<number> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1')
  const closed = once(socket, 'close')
  let text = ''
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
  socket.on('error', () => {})
  socket.write(request)
  await closed
  return Number(text.split(' ')[1])
}

async function refused (proxy: TestProxy): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const v of (await proxy.app.metrics.refused.get()).values) if (v.value > 0) out[String(v.labels.reason)] = v.value
  return out
}

test('everything dbshift answers itself is counted in dbshift_refused_total{reason}, never as a version\'s request', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { maxUrlBytes: 100, maxHeaderBytes: 2048 } }))
  assert.equal(await rawStatus(proxy.url, 'GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n'), 400)
  assert.equal(await rawStatus(proxy.url, 'GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'), 400)
  assert.equal(await rawStatus(proxy.url, 'OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'), 200)
  assert.equal(await rawStatus(proxy.url, `GET /${'a'.repeat(200)} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`), 414)
  assert.equal(await rawStatus(proxy.url, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(4096)}\r\nConnection: close\r\n\r\n`), 431)
  assert.equal(await rawStatus(proxy.url, 'GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n'), 400)
  assert.deepEqual(await refused(proxy), { bad_request: 3, asterisk: 1, uri_too_long: 1, headers_too_large: 1 })
  assert.equal(legacy.requests.length + migrated.requests.length, 0)
  assert.equal(proxy.app.traffic.totals('legacy', 60_000).requests + proxy.app.traffic.totals('migrated', 60_000).requests, 0)
  const text = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(text, /dbshift_refused_total\{reason="overloaded"\} 0/)
  assert.match(text, /dbshift_refused_total\{reason="bad_request"\} 3/)
})

test('shed requests are counted as overloaded', async (t) => {
  const redis = await startRedis(t)
  const held: Array<() => void> = []
  const slow = await startUpstream(t, 'legacy', (req, res) => { req.resume(); held.push(() => res.end('late')) })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, slow.url, migrated.url, { server: { maxInFlight: 2 } }))
  const admitted = [fetch(`${proxy.url}/a`), fetch(`${proxy.url}/b`)]
  while (slow.requests.length < 2) await once(slow.server, 'request')
  assert.equal((await fetch(`${proxy.url}/c`)).status, 503)
  for (const release of held) release()
  await Promise.all(admitted.map(async (p) => await (await p).text()))
  assert.deepEqual(await refused(proxy), { overloaded: 1 })
})

test('a failed request is logged in one line without a stack trace', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, `http://127.0.0.1:${await freePort()}`))
  await redis.client.set('dbshift:{default}:percent', '100')
  while (proxy.app.sync.current.percent !== 100) await once(proxy.app.sync, 'change')
  assert.equal((await fetch(`${proxy.url}/x`, { headers: { 'x-user-id': 'u' } })).status, 502)
  const lines = proxy.logs.filter((line) => line.msg === 'upstream failed')
  assert.equal(lines.length, 1)
  assert.equal(lines[0]?.code, 'ECONNREFUSED')
  assert.ok(!JSON.stringify(lines[0]).includes('stack'), JSON.stringify(lines[0]))
})
