import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { test } from 'node:test'
import { freePort, startProxy, startRedis, testConfig } from './helpers.ts'
import { connectAs, refusedHandshake, startWsUpstream, usersInBuckets } from './websocket-helpers.ts'

const migratedUser = usersInBuckets(0, 5000, 1)[0] as string
const legacyUser = usersInBuckets(5000, 10000, 1)[0] as string

test('a handshake the upstream refuses reaches the client as that refusal; a 5xx one is an error of that version, a 4xx one is not', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy', {
    verifyClient: (_info, done) => { done(false, 403, 'no ticket', { 'x-reason': 'ticket' }) }
  })
  const migrated = await startWsUpstream(t, 'migrated', {
    verifyClient: (_info, done) => { done(false, 503, 'busy') }
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { initialPercent: 50 } }))

  const forbidden = await refusedHandshake(proxy.url, legacyUser)
  assert.equal(forbidden.status, 403)
  assert.equal(forbidden.body, 'no ticket')
  assert.equal(forbidden.headers['x-reason'], 'ticket')
  assert.equal(forbidden.headers['x-dbshift-version'], 'legacy')
  assert.equal(forbidden.headers.upgrade, undefined)

  const busy = await refusedHandshake(proxy.url, migratedUser)
  assert.equal(busy.status, 503)
  assert.equal(busy.headers['x-dbshift-version'], 'migrated')

  assert.deepEqual(proxy.app.traffic.totals('legacy', 60_000), { requests: 1, errors: 0 })
  assert.deepEqual(proxy.app.traffic.totals('migrated', 60_000), { requests: 1, errors: 1 })
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_requests_total\{version="legacy",code="403"\} 1/)
  assert.match(metrics, /dbshift_requests_total\{version="migrated",code="503"\} 1/)
  assert.equal(proxy.app.connections.count(), 0)
})

test('a handshake to a pool member that refuses the connection goes to the next member; one that reached a member is never sent again', async (t) => {
  const redis = await startRedis(t)
  const dead = `http://127.0.0.1:${await freePort()}` // nothing listens: the connection is refused before any byte
  const legacy = await startWsUpstream(t, 'legacy')
  // Reads the handshake, then drops the connection: the upstream saw it, so it must not be sent anywhere again.
  const received: string[] = []
  const dropper = createServer((socket: Socket) => {
    socket.once('data', (chunk: Buffer) => {
      received.push(chunk.toString('latin1'))
      socket.destroy()
    })
  })
  dropper.listen(0, '127.0.0.1')
  await once(dropper, 'listening')
  t.after(() => { dropper.close() })
  const migrated = await startWsUpstream(t, 'migrated')
  const dropperUrl = `http://127.0.0.1:${(dropper.address() as AddressInfo).port}`
  const proxy = await startProxy(t, testConfig(redis.url, [dead, legacy.url], [dropperUrl, migrated.url], { rollout: { initialPercent: 50 } }))

  for (let i = 0; i < 3; i++) {
    const client = await connectAs(t, proxy.url, legacyUser)
    assert.equal(client.hello.servedBy, 'legacy', 'the dead member is skipped')
  }
  assert.equal(legacy.handshakes.length, 3)

  const failed = await refusedHandshake(proxy.url, migratedUser) // the first turn of the migrated pool is the dropper
  assert.equal(failed.status, 502)
  assert.equal(JSON.parse(failed.body).error, 'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE')
  assert.equal(failed.headers['x-dbshift-version'], 'migrated')
  assert.equal(received.length, 1)
  assert.match(received[0] as string, /^GET \/live HTTP\/1\.1\r\n/)
  assert.match(received[0] as string, /\r\nupgrade: websocket\r\n/i)
  assert.equal(migrated.handshakes.length, 0, 'a handshake that reached the upstream is not retried on another member')
  assert.deepEqual(proxy.app.traffic.totals('migrated', 60_000), { requests: 1, errors: 1 })
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_upstream_errors_total\{version="migrated",reason="reset"\} 1/)
  assert.match(metrics, /dbshift_upstream_errors_total\{version="legacy",reason="refused"\} 0/, 'a refusal that another member made up for is no error')
})

/** One raw exchange on a fresh connection: the whole answer as text. */
async function raw (url: string, request: string): Promise<string> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1')
  let text = ''
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
  socket.write(request)
  await once(socket, 'close')
  return text
}

test('an Upgrade to h2c is not upgraded: it is served as plain HTTP/1.1, without the Upgrade, and the connection closes', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))

  const answer = await raw(proxy.url, 'GET /plain HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n')
  assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/)
  assert.match(answer, /\r\nconnection: close\r\n/i)
  assert.match(answer, /\r\nx-dbshift-version: legacy\r\n/)
  assert.doesNotMatch(answer, /\r\nupgrade:/i)
  const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>
  assert.deepEqual(body, { servedBy: 'legacy', tag: 'legacy', upgrade: null, connection: 'keep-alive' }, 'the upstream sees a plain request')

  const withBody = await raw(proxy.url, 'POST /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello')
  assert.match(withBody, /^HTTP\/1\.1 400 /)
  assert.match(withBody, /DBSHIFT_ERR_BAD_REQUEST/)
  assert.equal(legacy.handshakes.length + migrated.handshakes.length, 0)
})

test('at most server.maxUpgraded WebSockets are open: the next handshake gets 503 until one closes', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { maxUpgraded: 2 } }))

  const first = await connectAs(t, proxy.url, 'a')
  await connectAs(t, proxy.url, 'b')
  const refused = await refusedHandshake(proxy.url, 'c')
  assert.equal(refused.status, 503)
  assert.equal(refused.headers['retry-after'], '1')
  assert.equal(JSON.parse(refused.body).error, 'DBSHIFT_ERR_TOO_MANY_UPGRADED')
  assert.equal(legacy.handshakes.length, 2, 'the refused one never reached an upstream')
  assert.equal(proxy.app.traffic.totals('legacy', 60_000).errors, 0, 'a refusal of dbshift\'s own is no error of a version')
  assert.match(await (await fetch(`${proxy.adminUrl}/metrics`)).text(), /dbshift_refused_total\{reason="overloaded"\} 1/)

  const removed = once(proxy.app.connections, 'removed')
  first.socket.close()
  await removed
  const again = await connectAs(t, proxy.url, 'c')
  assert.equal(again.hello.servedBy, 'legacy')
})

test('a handshake with two Host headers or an overlong target is refused before any upstream', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, legacy.url, { server: { maxUrlBytes: 64 } }))
  const handshake = (target: string, extra = ''): string => `GET ${target} HTTP/1.1\r\nHost: a\r\n${extra}Connection: Upgrade\r\nUpgrade: websocket\r\n` +
    'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'
  assert.match(await raw(proxy.url, handshake('/live', 'Host: b\r\n')), /^HTTP\/1\.1 400 [^]*DBSHIFT_ERR_BAD_REQUEST/)
  assert.match(await raw(proxy.url, handshake('/' + 'x'.repeat(100))), /^HTTP\/1\.1 414 [^]*DBSHIFT_ERR_URI_TOO_LONG/)
  assert.match(await raw(proxy.url, handshake('ftp://shop.example/live')), /^HTTP\/1\.1 400 [^]*DBSHIFT_ERR_BAD_REQUEST/)
  assert.equal(legacy.handshakes.length, 0)
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_refused_total\{reason="bad_request"\} 2/)
  assert.match(metrics, /dbshift_refused_total\{reason="uri_too_long"\} 1/)

  // The target is normalised as for any request: dot-segments cannot climb out of a pool's base path.
  const client = await connectAs(t, proxy.url, 'a', '/x/../live//now')
  assert.equal(client.hello.servedBy, 'legacy')
  assert.equal(legacy.handshakes[0]?.url, '/live/now')
})

test('an upstream that takes the handshake and never answers gets 504 after upstream.headersTimeoutMs, as an error of that version', async (t) => {
  const redis = await startRedis(t)
  const held: Socket[] = []
  const silent = createServer((socket: Socket) => { held.push(socket) })
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.after(() => {
    for (const socket of held) socket.destroy()
    silent.close()
  })
  const legacy = await startWsUpstream(t, 'legacy')
  const silentUrl = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, silentUrl, { rollout: { initialPercent: 50 }, upstream: { headersTimeoutMs: 200 } }))

  const answer = await refusedHandshake(proxy.url, migratedUser)
  assert.equal(answer.status, 504)
  assert.equal(JSON.parse(answer.body).error, 'DBSHIFT_ERR_UPSTREAM_TIMEOUT')
  assert.equal(held.length, 1, 'not sent again: the upstream may be working on it')
  assert.deepEqual(proxy.app.traffic.totals('migrated', 60_000), { requests: 1, errors: 1 })
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_upstream_errors_total\{version="migrated",reason="timeout"\} 1/)
  assert.equal((await connectAs(t, proxy.url, legacyUser)).hello.servedBy, 'legacy', 'the other version is unaffected')
})

test('a client that leaves during the handshake frees its place under maxUpgraded and is no error of the version', async (t) => {
  const redis = await startRedis(t)
  const held: Socket[] = []
  const silent = createServer((socket: Socket) => {
    held.push(socket)
    socket.resume() // read, so that its end is seen
  })
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.after(() => {
    for (const socket of held) socket.destroy()
    silent.close()
  })
  const reached = once(silent, 'connection')
  const migrated = await startWsUpstream(t, 'migrated')
  const silentUrl = `http://127.0.0.1:${(silent.address() as AddressInfo).port}`
  const proxy = await startProxy(t, testConfig(redis.url, silentUrl, migrated.url, { rollout: { initialPercent: 50 }, server: { maxUpgraded: 1 } }))

  const leaving = connect(Number(new URL(proxy.url).port), '127.0.0.1')
  leaving.write(`GET /live HTTP/1.1\r\nHost: x\r\nX-User-Id: ${legacyUser}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
  const [upstreamSide] = await reached as [Socket]
  const upstreamClosed = once(upstreamSide, 'close')
  leaving.destroy()
  await upstreamClosed // dbshift gave up the upstream connection of the handshake nobody waits for
  assert.equal((await connectAs(t, proxy.url, migratedUser)).hello.servedBy, 'migrated', 'the place it held is free again')
  assert.deepEqual(proxy.app.traffic.totals('legacy', 60_000), { requests: 0, errors: 0 })
})
