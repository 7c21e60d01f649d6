import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import { test, type TestContext } from 'node:test'
import { startProxy, startRedis, startUpstream, testConfig, type TestProxy, type TestUpstream } from './helpers.ts'

/** 32 MiB: far more than the socket buffers between the proxy and a client that does not read. */
const BIG = Buffer.alloc(32 * 1024 * 1024, 'x')

async function bigUpstream (t: TestContext): Promise<TestUpstream> {
  return await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    if (req.url?.startsWith('/big') === true) {
      res.writeHead(200, { 'content-length': BIG.length })
      res.end(BIG)
    } else {
      res.end('small')
    }
  })
}

async function proxyOver (t: TestContext, legacy: TestUpstream, file: Record<string, unknown>): Promise<TestProxy> {
  const redis = await startRedis(t)
  const migrated = await startUpstream(t, 'migrated')
  return await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, file))
}

/** A client that sends `request` and then never reads. */
async function nonReader (t: TestContext, url: string, request: string): Promise<Socket> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1')
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.pause()
  socket.write(request)
  t.after(() => socket.destroy())
  return socket
}

test('clients that stop reading are cut after server.writeTimeoutMs and do not hold the upstream connections', async (t) => {
  const legacy = await bigUpstream(t)
  const proxy = await proxyOver(t, legacy, { upstream: { connections: 2, queueTimeoutMs: 60_000 }, server: { writeTimeoutMs: 300 } })
  await nonReader(t, proxy.url, 'GET /big/1 HTTP/1.1\r\nHost: x\r\n\r\n')
  await nonReader(t, proxy.url, 'GET /big/2 HTTP/1.1\r\nHost: x\r\n\r\n')
  while (legacy.requests.length < 2) await once(legacy.server, 'request')
  // Both pool connections are taken by answers nobody reads; another user still gets an answer.
  const res = await fetch(`${proxy.url}/small`)
  assert.equal(res.status, 200)
  assert.equal(await res.text(), 'small')
  assert.ok(proxy.logs.some((line) => line.msg === 'the client read nothing for server.writeTimeoutMs; the answer is cut'))
  const upstreamErrors = (await proxy.app.metrics.upstreamErrors.get()).values.reduce((sum, v) => sum + v.value, 0)
  assert.equal(upstreamErrors, 0, 'a client that stops reading is not the upstream\'s failure')
})

test('128 pipelined GETs on one connection take one upstream connection at a time', async (t) => {
  const legacy = await bigUpstream(t)
  const proxy = await proxyOver(t, legacy, { upstream: { connections: 2, queueTimeoutMs: 60_000 }, server: { writeTimeoutMs: 60_000 } })
  let pipelined = ''
  for (let i = 0; i < 128; i++) pipelined += `GET /big/${i} HTTP/1.1\r\nHost: x\r\n\r\n`
  const pipeliner = await nonReader(t, proxy.url, pipelined)
  while (legacy.requests.length < 1) await once(legacy.server, 'request')
  const res = await fetch(`${proxy.url}/small`)
  assert.equal(await res.text(), 'small', 'the other pool connection stays free for other users')
  assert.equal(legacy.requests.filter((req) => req.url?.startsWith('/big') === true).length, 1, 'the rest wait their turn on their own connection')
  pipeliner.destroy() // what is queued behind it goes with it
})

test('a request that finds no free upstream connection within upstream.queueTimeoutMs gets 503 DBSHIFT_ERR_UPSTREAM_BUSY', async (t) => {
  const held: Array<() => void> = []
  const legacy = await startUpstream(t, 'legacy', (req, res) => { req.resume(); held.push(() => res.end('late')) })
  const proxy = await proxyOver(t, legacy, { upstream: { connections: 1, queueTimeoutMs: 300 } })
  const first = fetch(`${proxy.url}/first`)
  while (legacy.requests.length < 1) await once(legacy.server, 'request')
  const second = await fetch(`${proxy.url}/second`)
  assert.equal(second.status, 503)
  assert.equal(second.headers.get('retry-after'), '1')
  assert.deepEqual(await second.json(), { error: 'DBSHIFT_ERR_UPSTREAM_BUSY', message: 'no connection to the legacy pool became free in time', version: 'legacy' })
  for (const release of held) release()
  assert.equal(await (await first).text(), 'late')
  // The abandoned request is never sent later.
  const third = fetch(`${proxy.url}/third`)
  while (legacy.requests.length < 2) await once(legacy.server, 'request')
  held.at(-1)?.()
  assert.equal((await third).status, 200)
  assert.deepEqual(legacy.requests.map((req) => req.url), ['/first', '/third'])
})
