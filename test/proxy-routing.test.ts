import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import { request, type IncomingMessage } from 'node:http'
import { Readable } from 'node:stream'
import { test } from 'node:test'
import { Router } from '../src/routing/decide.ts'
import { getAs, peakRss, startProxy, startProxyProcess, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
const users = Array.from({ length: 200 }, (_, i) => `user-${i}`)

async function setup (t: Parameters<typeof startRedis>[0]) {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  return { redis, legacy, migrated, proxy }
}

test('a plain SET of the percentage changes the split, and each request reaches the pool its bucket says', async (t) => {
  const { redis, proxy } = await setup(t)
  for (const user of users.slice(0, 20)) assert.equal((await getAs(proxy.url, user)).version, 'legacy') // 0% by default

  await redis.client.set('dbshift:{default}:percent', '30')
  await untilRollout(proxy.app, (s) => s.percent === 30)
  let migrated = 0
  for (const user of users) {
    const answer = await getAs(proxy.url, user, '/orders?page=2')
    const expected = router.decide({ percent: 30, rolledBack: false, allow: new Set(), deny: new Set() }, user).version
    assert.equal(answer.version, expected, user)
    assert.equal(answer.body.servedBy, expected, `${user} reached the other pool`)
    assert.equal(answer.body.tag, expected, 'the upstream sees x-dbshift-version')
    assert.equal(answer.body.path, '/orders?page=2')
    if (expected === 'migrated') migrated++
  }
  assert.ok(migrated > 30 && migrated < 90, `${migrated} of 200 migrated at 30%`)

  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(proxy.app, (s) => s.percent === 100)
  assert.equal((await getAs(proxy.url, 'bob')).version, 'migrated')
})

test('allow and deny sets override the bucket; deny wins', async (t) => {
  const { redis, proxy } = await setup(t)
  await redis.client.sadd('dbshift:{default}:allow', 'tester-1', 'both')
  await redis.client.sadd('dbshift:{default}:deny', 'alice', 'both')
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(proxy.app, (s) => s.percent === 100 && s.allow.size === 2 && s.deny.size === 2)
  assert.equal((await getAs(proxy.url, 'tester-1')).version, 'migrated')
  assert.equal((await getAs(proxy.url, 'alice')).version, 'legacy')
  assert.equal((await getAs(proxy.url, 'both')).version, 'legacy')
  assert.equal((await getAs(proxy.url, 'anyone-else')).version, 'migrated')

  await redis.client.set('dbshift:{default}:percent', '0')
  await untilRollout(proxy.app, (s) => s.percent === 0)
  assert.equal((await getAs(proxy.url, 'tester-1')).version, 'migrated', 'the allow-set is migrated at 0%')
})

test('anonymous and oversized keys go to legacy; a forged x-dbshift-version is replaced', async (t) => {
  const { redis, proxy } = await setup(t)
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(proxy.app, (s) => s.percent === 100)
  assert.equal((await getAs(proxy.url, undefined)).version, 'legacy')
  assert.equal((await getAs(proxy.url, 'x'.repeat(257))).version, 'legacy')
  assert.equal((await getAs(proxy.url, 'x'.repeat(256))).version, 'migrated')

  await redis.client.set('dbshift:{default}:percent', '0')
  await untilRollout(proxy.app, (s) => s.percent === 0)
  const res = await fetch(proxy.url, { headers: { 'x-user-id': 'bob', 'x-dbshift-version': 'migrated' } })
  const body = await res.json() as { servedBy: string, tag: string }
  assert.equal(res.headers.get('x-dbshift-version'), 'legacy')
  assert.equal(body.servedBy, 'legacy')
  assert.equal(body.tag, 'legacy')
})

test('a non-ASCII user key is hashed from its UTF-8 bytes, as the README formula says', async (t) => {
  const { redis, proxy } = await setup(t)
  // José is in bucket 5876: migrated at 58.77%, legacy at 58.76%.
  const ask = async (): Promise<string | undefined> => await new Promise((resolve, reject) => {
    const req = request(proxy.url, { headers: { 'x-user-id': Buffer.from('José', 'utf8').toString('latin1') } }, (res) => {
      res.resume()
      resolve(res.headers['x-dbshift-version'] as string | undefined)
    })
    req.on('error', reject)
    req.end()
  })
  await redis.client.set('dbshift:{default}:percent', '58.76')
  await untilRollout(proxy.app, (s) => s.percent === 58.76)
  assert.equal(await ask(), 'legacy')
  await redis.client.set('dbshift:{default}:percent', '58.77')
  await untilRollout(proxy.app, (s) => s.percent === 58.77)
  assert.equal(await ask(), 'migrated')
})

test('methods, bodies, status codes and end-to-end headers pass through; hop-by-hop headers do not', async (t) => {
  const redis = await startRedis(t)
  const seen: Array<{ method: string, headers: Record<string, unknown>, body: string }> = []
  const echo = await startUpstream(t, 'legacy', (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      seen.push({ method: req.method ?? '', headers: req.headers, body: Buffer.concat(chunks).toString() })
      res.writeHead(201, [['set-cookie', 'a=1'], ['set-cookie', 'b=2'], ['x-app', 'yes'], ['connection', 'x-internal'], ['x-internal', 'secret']].flat())
      res.end('created')
    })
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, echo.url, migrated.url))
  // node:http, not fetch: fetch would drop the Connection header before it is sent.
  const res = await new Promise<IncomingMessage & { text: string }>((resolve, reject) => {
    const req = request(`${proxy.url}/items/7`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/json', 'x-user-id': 'bob', connection: 'keep-alive, x-hop', 'x-hop': 'drop me', 'x-keep': 'keep me' }
    }, (answer) => {
      let text = ''
      answer.on('data', (data: Buffer) => { text += data.toString() })
      answer.on('end', () => resolve(Object.assign(answer, { text })))
    })
    req.on('error', reject)
    req.end('{"qty":3}')
  })
  assert.equal(res.statusCode, 201)
  assert.equal(res.text, 'created')
  assert.deepEqual(res.headers['set-cookie'], ['a=1', 'b=2'])
  assert.equal(res.headers['x-app'], 'yes')
  assert.equal(res.headers['x-internal'], undefined, 'a header the upstream named in Connection is dropped')
  const upstreamSaw = seen[0]
  assert.ok(upstreamSaw !== undefined)
  assert.equal(upstreamSaw.method, 'PATCH')
  assert.equal(upstreamSaw.body, '{"qty":3}')
  assert.equal(upstreamSaw.headers['x-keep'], 'keep me')
  assert.equal(upstreamSaw.headers['x-hop'], undefined, 'a header the client named in Connection is dropped')
  assert.equal(upstreamSaw.headers['x-dbshift-version'], 'legacy')
  assert.equal(upstreamSaw.headers['x-forwarded-for'], '127.0.0.1')
})

test('a 100 MB upload and a 100 MB download stream through a dbshift process whose peak memory stays flat', async (t) => {
  const redis = await startRedis(t)
  const SIZE = 100 * 1024 * 1024
  const chunk = Buffer.alloc(64 * 1024, 7)
  const chunks = function * (): Generator<Buffer> { for (let sent = 0; sent < SIZE; sent += chunk.length) yield chunk }
  let uploadDigest = ''
  const upstream = await startUpstream(t, 'legacy', (req, res) => {
    if (req.method === 'POST') {
      const hash = createHash('sha256')
      let bytes = 0
      req.on('data', (data: Buffer) => { hash.update(data); bytes += data.length })
      req.on('end', () => {
        uploadDigest = hash.digest('hex')
        res.end(String(bytes))
      })
      return
    }
    res.writeHead(200, { 'content-length': SIZE })
    Readable.from(chunks()).pipe(res)
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxyProcess(t, { REDIS_URL: redis.url, DBSHIFT_LEGACY: upstream.url, DBSHIFT_MIGRATED: migrated.url })
  // Warm up (connections, JIT), then take the process's peak resident set as the baseline.
  for (let i = 0; i < 20; i++) await (await fetch(`${proxy.url}/warm`)).text()
  const before = peakRss(proxy.pid)

  const expected = createHash('sha256')
  const sent = await new Promise<string>((resolve, reject) => {
    const req = request(`${proxy.url}/upload`, { method: 'POST', headers: { 'x-user-id': 'bob', 'content-length': SIZE } }, (res) => {
      let text = ''
      res.on('data', (data: Buffer) => { text += data.toString() })
      res.on('end', () => resolve(text))
    })
    req.on('error', reject)
    Readable.from((function * () { for (const part of chunks()) { expected.update(part); yield part } })()).pipe(req)
  })
  assert.equal(sent, String(SIZE))
  assert.equal(uploadDigest, expected.digest('hex'))

  const received = await new Promise<number>((resolve, reject) => {
    request(`${proxy.url}/download`, { headers: { 'x-user-id': 'bob' } }, (res) => {
      let bytes = 0
      res.on('data', (data: Buffer) => { bytes += data.length })
      res.on('end', () => resolve(bytes))
    }).on('error', reject).end()
  })
  assert.equal(received, SIZE)
  const growth = peakRss(proxy.pid) - before
  assert.ok(growth < 40 * 1024 * 1024, `the proxy's peak memory grew by ${Math.round(growth / 1048576)} MiB while streaming 2 × 100 MiB`)
})
