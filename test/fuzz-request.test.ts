import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { connect } from 'node:net'
import fc from 'fast-check'
import { Agent, request } from 'undici'
import { normalisePath } from '../src/proxy/target.ts'
import { normalisePath as routePath } from '../src/routing/path.ts'
import { UserKeyReader } from '../src/routing/user-key.ts'
import { startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'

interface Seen { servedBy: string, method: string, url: string, tag: string | undefined, headers: IncomingMessage['headers'], body: string }

/** Upstreams that echo what they received, so that each property can compare both sides. */
function echo (name: string) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.once('end', () => {
      const seen: Seen = { servedBy: name, method: req.method ?? '', url: req.url ?? '', tag: req.headers['x-dbshift-version'] as string | undefined, headers: req.headers, body: Buffer.concat(chunks).toString('latin1') }
      const body = JSON.stringify(seen)
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
  }
}

const token = fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/)
const headerValue = fc.string({ unit: fc.integer({ min: 0x20, max: 0xff }).filter((c) => c !== 0x7f).map((c) => String.fromCharCode(c)), maxLength: 300 })
const pathSegment = fc.string({ unit: fc.constantFrom(...'abcXYZ019-._~!$&\'()*+,;=:@'.split(''), '%20', '%2F', '%C3%A9', '%00'), maxLength: 12 })

test('property: any well-formed request is forwarded once, to the version the router chose, with its path and body intact; one whose path cannot be normalised is refused', async (t) => {
  const redis = await startRedis(t)
  await redis.client.set('dbshift:{default}:percent', '37.5')
  const legacy = await startUpstream(t, 'legacy', echo('legacy'))
  const migrated = await startUpstream(t, 'migrated', echo('migrated'))
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { initialPercent: 37.5 } }))
  const agent = new Agent({ connections: 4 })
  t.after(async () => await agent.close())
  const reader = new UserKeyReader('x-user-id')

  await fc.assert(fc.asyncProperty(
    fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'),
    fc.array(pathSegment, { maxLength: 5 }),
    fc.option(fc.string({ maxLength: 20 }).map(encodeURIComponent)),
    fc.option(headerValue, { nil: undefined }),
    fc.dictionary(token.map((name) => `x-f-${name}`), headerValue, { maxKeys: 5 }),
    fc.option(fc.constantFrom('legacy', 'migrated', 'both'), { nil: undefined }),
    fc.option(fc.string({ maxLength: 2_000 }), { nil: undefined }),
    async (method, segments, query, user, extra, forged, body) => {
      const path = `/${segments.join('/')}${query === null ? '' : `?q=${query}`}`
      const headers: Record<string, string> = { ...extra }
      if (user !== undefined) headers['x-user-id'] = user
      if (forged !== undefined) headers['x-dbshift-version'] = forged
      const sendBody = method !== 'GET' && method !== 'OPTIONS' && body !== undefined
      const before = legacy.requests.length + migrated.requests.length
      const res = await request(`${proxy.url}${path}`, {
        dispatcher: agent,
        method: method as 'GET',
        headers: Object.fromEntries(Object.entries(headers).map(([name, value]) => [name, Buffer.from(value, 'latin1').toString('latin1')])),
        body: sendBody ? Buffer.from(body, 'utf8') : undefined
      })
      const sent = new URL(`${proxy.url}${path}`) // the client normalises the target as WHATWG URL does
      if (typeof routePath(sent.pathname) !== 'string') {
        // A path with no single meaning (an encoded slash, a NUL) is refused, and never forwarded.
        assert.equal(res.statusCode, 400)
        assert.equal(((await res.body.json()) as { error: string }).error, 'DBSHIFT_ERR_BAD_REQUEST')
        assert.equal(legacy.requests.length + migrated.requests.length, before, 'not forwarded')
        return
      }
      const seen = await res.body.json() as Seen
      assert.equal(res.statusCode, 200)
      assert.equal(legacy.requests.length + migrated.requests.length, before + 1, 'forwarded exactly once')
      // HTTP drops the spaces around a header value before anyone sees it.
      const key = reader.read({ 'x-user-id': user?.replace(/^[ \t]+|[ \t]+$/g, '') })
      const expected = proxy.app.router.decide(proxy.app.sync.current, key).version
      assert.equal(seen.servedBy, expected)
      assert.equal(seen.tag, expected, 'the upstream is told the chosen version, whatever the client sent')
      assert.equal(res.headers['x-dbshift-version'], expected)
      assert.equal(seen.method, method)
      assert.equal(seen.url, normalisePath(sent.pathname + sent.search), 'and dbshift merges repeated slashes')
      assert.equal(seen.body, sendBody ? Buffer.from(body, 'utf8').toString('latin1') : '')
      for (const [name, value] of Object.entries(extra)) assert.equal(String(seen.headers[name]).trim(), value.trim(), name)
    }
  ), { numRuns: 300 })
})

test('property: random bytes on the socket never crash the proxy; only what its parser accepts as a whole request is forwarded', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { headersTimeoutMs: 500, requestTimeoutMs: 1_000 } }))
  const port = Number(new URL(proxy.url).port)

  // Garbage, and garbage after a valid request line, so that the header parser is reached too.
  const garbage = fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 512 }).map((bytes) => Buffer.from(bytes)),
    fc.uint8Array({ minLength: 1, maxLength: 512 }).map((bytes) => Buffer.concat([Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n'), Buffer.from(bytes), Buffer.from('\r\n\r\n')]))
  )
  await fc.assert(fc.asyncProperty(garbage, async (bytes) => {
    const socket = connect(port, '127.0.0.1')
    const closed = once(socket, 'close')
    let answer = ''
    socket.on('data', (chunk: Buffer) => { answer += chunk.toString('latin1') })
    socket.on('error', () => {})
    socket.end(bytes)
    await closed
    // An answer, when there is one, is a real HTTP answer: a 4xx from the parser or a 200 for a valid request.
    if (answer !== '') assert.match(answer, /^HTTP\/1\.1 (200|400|404|408|413|414|431|505) /)
  }), { numRuns: 300 })
  // Whatever was forwarded was a complete, valid request (the proxy's parser accepted it); it is still serving.
  for (const req of [...legacy.requests, ...migrated.requests]) assert.equal(req.complete, true)
  const res = await request(`${proxy.url}/still-alive`)
  assert.equal(res.statusCode, 200)
  await res.body.dump()
})
