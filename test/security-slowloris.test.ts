import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import { startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'

const SLOW_CLIENTS = 200

test('slow clients (slowloris) are cut off after server.headersTimeoutMs without starving others', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { headersTimeoutMs: 1_000, requestTimeoutMs: 2_000 } }))
  const port = Number(new URL(proxy.url).port)

  // Each slow client sends its request line, then one header byte every 100 ms, and never finishes.
  const slow: Array<{ socket: Socket, answer: string, closed: Promise<unknown>, openedAt: number, closedAt: number }> = []
  const drip = setInterval(() => { for (const client of slow) if (!client.socket.destroyed) client.socket.write('a') }, 100)
  t.after(() => {
    clearInterval(drip)
    for (const client of slow) client.socket.destroy()
  })
  for (let i = 0; i < SLOW_CLIENTS; i++) {
    const socket = connect(port, '127.0.0.1')
    const client = { socket, answer: '', closed: once(socket, 'close'), openedAt: Date.now(), closedAt: 0 }
    socket.on('data', (chunk: Buffer) => { client.answer += chunk.toString() })
    socket.on('error', () => {})
    socket.once('close', () => { client.closedAt = Date.now() })
    socket.write('GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ')
    slow.push(client)
  }

  // Meanwhile everyone else is served as usual.
  const statuses: number[] = []
  const until = Date.now() + 1_500
  while (Date.now() < until) {
    const res = await fetch(`${proxy.url}/normal`, { headers: { 'x-user-id': `u${statuses.length}` } })
    await res.arrayBuffer()
    statuses.push(res.status)
  }
  assert.ok(statuses.length > 5, `only ${statuses.length} requests were served while the slow clients dripped`)
  assert.deepEqual(new Set(statuses), new Set([200]))

  // Every slow client is answered 408 and disconnected, although it kept sending bytes.
  await Promise.all(slow.map(async (client) => await client.closed))
  for (const client of slow) {
    assert.match(client.answer, /^HTTP\/1\.1 408 /)
    assert.ok(client.closedAt - client.openedAt < 5_000, `a slow client stayed ${client.closedAt - client.openedAt} ms`)
  }
  assert.equal(legacy.requests.filter((req) => req.url !== '/normal').length, 0, 'no slow request reached an upstream')
})
