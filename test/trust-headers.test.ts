import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import { request } from 'undici'
import { headerPolicy } from '../src/proxy/headers.ts'
import { startProxy, startRedis, startUpstream, testConfig, type TestProxy } from './helpers.ts'

/** What the upstream received, echoed back. */
async function echoProxy (t: TestContext, file: Record<string, unknown> = {}): Promise<{ proxy: TestProxy, seen: (headers: Record<string, string>) => Promise<Record<string, string>>, upstream: string }> {
  const redis = await startRedis(t)
  const echo = await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(req.headers))
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, echo.url, migrated.url, file))
  const seen = async (headers: Record<string, string>): Promise<Record<string, string>> =>
    await (await request(`${proxy.url}/h`, { headers })).body.json() as Record<string, string>
  return { proxy, seen, upstream: new URL(echo.url).host }
}

const spoofed = {
  'x-dbshift-shadow': '1',
  'x-dbshift-anything': 'x',
  'x-forwarded-for': '203.0.113.9',
  'x-forwarded-proto': 'https',
  'x-forwarded-host': 'admin.internal',
  'x-forwarded-port': '443',
  forwarded: 'for=203.0.113.9;proto=https'
}

test('a client cannot pose as shadow traffic, claim TLS, another host or another address', async (t) => {
  const { seen } = await echoProxy(t)
  const headers = await seen({ host: 'shop.example', ...spoofed })
  assert.equal(headers['x-dbshift-shadow'], undefined)
  assert.equal(headers['x-dbshift-anything'], undefined)
  assert.equal(headers['x-dbshift-version'], 'legacy')
  assert.equal(headers['x-forwarded-for'], '127.0.0.1')
  assert.equal(headers['x-forwarded-proto'], 'http')
  assert.equal(headers['x-forwarded-host'], 'shop.example')
  assert.equal(headers['x-forwarded-port'], undefined)
  assert.equal(headers.forwarded, undefined)
})

test('from a trusted proxy (server.trustedProxies), X-Forwarded-* and Forwarded are kept and X-Forwarded-For appended to', async (t) => {
  const { seen } = await echoProxy(t, { server: { trustedProxies: ['10.0.0.0/8', '127.0.0.0/8', '::1'] } })
  const headers = await seen({ host: 'shop.example', ...spoofed })
  assert.equal(headers['x-dbshift-shadow'], undefined, 'dbshift\'s own headers are dropped even from a trusted proxy')
  assert.equal(headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1')
  assert.equal(headers['x-forwarded-proto'], 'https')
  assert.equal(headers['x-forwarded-host'], 'admin.internal')
  assert.equal(headers.forwarded, 'for=203.0.113.9;proto=https')
})

test('Host is kept by default (upstream.preserveHost) and is the pool member\'s with preserveHost: false', async (t) => {
  const kept = await echoProxy(t)
  assert.equal((await kept.seen({ host: 'shop.example' })).host, 'shop.example')
  const rewritten = await echoProxy(t, { upstream: { preserveHost: false } })
  const headers = await rewritten.seen({ host: 'shop.example' })
  assert.equal(headers.host, rewritten.upstream)
  assert.equal(headers['x-forwarded-host'], 'shop.example', 'the client\'s Host still travels in X-Forwarded-Host')
})

test('server.trustedProxies: addresses and CIDR ranges, IPv4-mapped IPv6 included; anything else stops start-up naming it', () => {
  const { trusted } = headerPolicy(['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'], true)
  assert.ok(trusted !== undefined)
  for (const address of ['10.1.2.3', '::ffff:10.9.9.9', '2001:db8::1', '192.0.2.7']) assert.equal(trusted(address), true, address)
  for (const address of ['11.0.0.1', '192.0.2.8', '2001:db9::1', '', 'garbage']) assert.equal(trusted(address), false, address)
  assert.equal(headerPolicy([], true).trusted, undefined, 'none: no check on the hot path')
  assert.throws(() => headerPolicy(['10.0.0.0/8', 'lb.internal'], true), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'DBSHIFT_ERR_CONFIG')
    assert.match(err.message, /server\.trustedProxies = .*"lb\.internal" must be an IP address or a CIDR range/)
    return true
  })
})
