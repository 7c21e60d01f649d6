import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { test, type TestContext } from 'node:test'
import { classifyUpstreamError } from '../src/proxy/upstream-errors.ts'
import { nextGuardEvent, startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy } from './helpers.ts'

/** A rollout name of this file's own. */
const ROLLOUT = 'trust-targets'
/** Fast L1 windows: a wrongly counted error trips within a second. */
const L1 = { fastWindowMs: 2_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 60_000, minRequests: 100, evaluateIntervalMs: 100, minUsers: 1 }

interface RawAnswer { status: number, headers: Map<string, string>, body: string }

/** Sends raw bytes on one connection (Connection: close) and parses the one answer. */
async function raw (url: string, request: string): Promise<RawAnswer> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1')
  const closed = once(socket, 'close')
  let text = ''
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
  socket.on('error', () => {})
  socket.write(Buffer.from(request, 'latin1'))
  await closed
  const split = text.indexOf('\r\n\r\n')
  const [statusLine = '', ...lines] = text.slice(0, split).split('\r\n')
  const headers = new Map<string, string>()
  for (const line of lines) headers.set(line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim())
  return { status: Number(statusLine.split(' ')[1]), headers, body: split < 0 ? '' : text.slice(split + 4) }
}

/** An upstream on a raw socket: answers every request head it reads with `answer(head)`, bytes as given. */
async function rawUpstream (t: TestContext, answer: (head: string) => string): Promise<{ url: string, heads: string[] }> {
  const heads: string[] = []
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let buffered = ''
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('latin1')
      let end = buffered.indexOf('\r\n\r\n')
      while (end >= 0) {
        const head = buffered.slice(0, end)
        buffered = buffered.slice(end + 4)
        heads.push(head)
        socket.write(answer(head))
        end = buffered.indexOf('\r\n\r\n')
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, heads }
}

async function migratedProxy (t: TestContext, migratedUrl: string, extra: Record<string, unknown> = {}): Promise<TestProxy> {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '100')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migratedUrl, { rollout: { name: ROLLOUT }, guards: { l1: L1, l2: { enabled: false } }, ...extra }))
  await untilRollout(proxy.app, (s) => s.percent === 100)
  return proxy
}

/** Errors the guards saw for migrated, and the upstream errors counted. */
async function migratedErrors (proxy: TestProxy): Promise<{ window: number, upstream: number }> {
  const upstream = (await proxy.app.metrics.upstreamErrors.get()).values.filter((v) => v.labels.version === 'migrated').reduce((sum, v) => sum + v.value, 0)
  return { window: proxy.app.traffic.totals('migrated', 60_000).errors, upstream }
}

/** Sends good requests until an evaluation of the fleet's counts has seen them: proof the guard looked. */
async function evaluatedAfter (proxy: TestProxy, good: number): Promise<void> {
  const seen = nextGuardEvent(proxy.app, 'evaluated', (e) => e.source === 'fleet' && e.totals.fast.migrated.requests >= good)
  for (let i = 0; i < good; i++) await fetch(`${proxy.url}/ok`, { headers: { 'x-user-id': `good-${i}` } }).then(async (res) => await res.arrayBuffer())
  await seen
}

test('asterisk-form targets are answered by dbshift, never dispatched, and never counted: 30 of them leave the rollout active', async (t) => {
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await migratedProxy(t, migrated.url)
  for (let i = 0; i < 30; i++) {
    const options = await raw(proxy.url, `OPTIONS * HTTP/1.1\r\nHost: x\r\nX-User-ID: alice-${i}\r\nConnection: close\r\n\r\n`)
    assert.equal(options.status, 200)
    assert.match(options.headers.get('allow') ?? '', /GET/)
    for (const method of ['GET', 'POST']) {
      const refused = await raw(proxy.url, `${method} * HTTP/1.1\r\nHost: x\r\nX-User-ID: alice-${i}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)
      assert.equal(refused.status, 400, method)
      assert.equal(JSON.parse(refused.body).error, 'DBSHIFT_ERR_BAD_REQUEST')
    }
  }
  assert.equal(migrated.requests.length, 0, 'nothing reached the upstream')
  assert.deepEqual(await migratedErrors(proxy), { window: 0, upstream: 0 })
  await evaluatedAfter(proxy, 3)
  assert.equal(proxy.app.sync.current.state, 'active')
  assert.equal(proxy.app.sync.current.rolledBack, false)
})

test('absolute-form targets are rewritten to origin-form under the pool base path; the Host is the target\'s authority', async (t) => {
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await migratedProxy(t, `${migrated.url}/base`)
  for (let i = 0; i < 30; i++) {
    const answer = await raw(proxy.url, `GET http://other-host.example/x?q=${i} HTTP/1.1\r\nHost: shop.example\r\nX-User-ID: u-${i}\r\nConnection: close\r\n\r\n`)
    assert.equal(answer.status, 200)
    assert.equal(JSON.parse(answer.body).path, `/base/x?q=${i}`)
  }
  const last = migrated.requests.at(-1)
  assert.equal(last?.headers.host, 'other-host.example', 'RFC 9112 §3.2.2: the target\'s authority replaces Host')
  const bad = await raw(proxy.url, 'GET ftp://other-host.example/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  assert.equal(bad.status, 400)
  assert.equal(migrated.requests.length, 30)
  assert.deepEqual(await migratedErrors(proxy), { window: 0, upstream: 0 })
  await evaluatedAfter(proxy, 3)
  assert.equal(proxy.app.sync.current.state, 'active')
})

test('paths are normalised before they are put under the base path: no //host, no dot-segments leave it', async (t) => {
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await migratedProxy(t, `${migrated.url}/base`)
  const cases: Array<[string, string]> = [
    ['//evil.example/x', '/base/evil.example/x'],
    ['/a/./b/../c', '/base/a/c'],
    ['/a/%2e%2e/%2E/secret', '/base/secret'],
    ['/a//b///c?next=//x/../y', '/base/a/b/c?next=//x/../y'],
    ['/plain/path?x=1', '/base/plain/path?x=1']
  ]
  for (const [target, expected] of cases) {
    const answer = await raw(proxy.url, `GET ${target} HTTP/1.1\r\nHost: x\r\nX-User-ID: u\r\nConnection: close\r\n\r\n`)
    assert.equal(answer.status, 200, target)
    assert.equal(JSON.parse(answer.body).path, expected, target)
  }
  // A climb above the root has no single meaning: refused, never forwarded (see the normalised path of routes).
  for (const target of ['/a/../../../etc/passwd', '/..', '/%2e%2e/%2E%2e/secret']) {
    const answer = await raw(proxy.url, `GET ${target} HTTP/1.1\r\nHost: x\r\nX-User-ID: u\r\nConnection: close\r\n\r\n`)
    assert.equal(answer.status, 400, target)
  }
})

test('304 and 204 answers with a Content-Length are relayed, 50 times each, without a trip', async (t) => {
  const upstream = await rawUpstream(t, (head) => head.startsWith('GET /etag')
    ? 'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n'
    : head.startsWith('DELETE')
      ? 'HTTP/1.1 204 No Content\r\nContent-Length: 17\r\n\r\n'
      : 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')
  const proxy = await migratedProxy(t, upstream.url)
  for (let i = 0; i < 50; i++) {
    const notModified = await fetch(`${proxy.url}/etag`, { headers: { 'x-user-id': `u-${i}`, 'if-none-match': '"v1"' } })
    assert.equal(notModified.status, 304)
    assert.equal(notModified.headers.get('etag'), '"v1"')
    assert.equal(notModified.headers.get('x-dbshift-version'), 'migrated')
    const deleted = await fetch(`${proxy.url}/item/${i}`, { method: 'DELETE', headers: { 'x-user-id': `u-${i}` } })
    assert.equal(deleted.status, 204)
    assert.equal(await deleted.text(), '')
  }
  // Keep-alive still works after them: the connection was not left with 42 bytes owed.
  assert.equal(await (await fetch(`${proxy.url}/after`, { headers: { 'x-user-id': 'after' } })).text(), 'ok')
  assert.deepEqual(await migratedErrors(proxy), { window: 0, upstream: 0 })
  await evaluatedAfter(proxy, 3)
  assert.equal(proxy.app.sync.current.state, 'active')
})

test('a 1xx interim answer with a Content-Length is skipped and the final answer relayed', async (t) => {
  const upstream = await rawUpstream(t, () => 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody')
  const proxy = await migratedProxy(t, upstream.url)
  for (let i = 0; i < 25; i++) {
    const res = await fetch(`${proxy.url}/hints`, { headers: { 'x-user-id': `u-${i}` } })
    assert.equal(res.status, 200)
    assert.equal(await res.text(), 'body')
  }
  assert.deepEqual(await migratedErrors(proxy), { window: 0, upstream: 0 })
})

test('a broken upstream answer is a 502 with the JSON body, never an empty reply; a protocol error is not retried as a reset', async (t) => {
  const upstream = await rawUpstream(t, () => 'HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nbody')
  const proxy = await migratedProxy(t, upstream.url)
  const answer = await raw(proxy.url, 'GET /broken HTTP/1.1\r\nHost: x\r\nX-User-ID: bob\r\nConnection: close\r\n\r\n')
  assert.equal(answer.status, 502)
  assert.equal(JSON.parse(answer.body).error, 'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE')
  assert.equal(upstream.heads.length, 1, 'sent once: a protocol error is the upstream answering badly, not a stale socket')
  const reasons = (await proxy.app.metrics.upstreamErrors.get()).values.filter((v) => v.labels.version === 'migrated' && v.value > 0).map((v) => v.labels.reason)
  assert.deepEqual(reasons, ['protocol'], JSON.stringify(proxy.logs.filter((l) => l.msg === 'upstream failed')))
})

test('errors raised on this side before anything was sent (invalid argument, out of file descriptors) are nobody\'s version error', () => {
  for (const code of ['UND_ERR_INVALID_ARG', 'UND_ERR_NOT_SUPPORTED', 'EMFILE', 'ENFILE', 'ENOBUFS']) {
    const failure = classifyUpstreamError(Object.assign(new Error(code), { code }), 'migrated')
    assert.equal(failure.local, true, code)
    assert.equal(failure.beforeSend, true, code)
  }
  for (const code of ['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_HEADERS_TIMEOUT', 'HPE_INVALID_CONSTANT']) {
    assert.equal(classifyUpstreamError(Object.assign(new Error(code), { code }), 'migrated').local, false, code)
  }
})

test('the shadow comparison sends the rewritten target too: an absolute-form request is compared, not an error', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => { req.resume(); res.end(JSON.stringify({ path: req.url })) })
  const migrated = await startUpstream(t, 'migrated', (req, res) => { req.resume(); res.end(JSON.stringify({ path: req.url })) })
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '100')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, {
    rollout: { name: ROLLOUT },
    guards: { l1: L1, l2: { enabled: false }, l3: { enabled: true, sampleRate: 1, minComparisons: 1000 } }
  }))
  await untilRollout(proxy.app, (s) => s.percent === 100)
  const compared = nextGuardEvent(proxy.app, 'shadow')
  const answer = await raw(proxy.url, 'GET http://other-host.example/a//b/../c HTTP/1.1\r\nHost: x\r\nX-User-ID: u\r\nConnection: close\r\n\r\n')
  assert.equal(JSON.parse(answer.body).path, '/a/c')
  assert.deepEqual(await compared, ['match'])
  assert.deepEqual(legacy.requests.map((req) => req.url), ['/a/c'])
})
