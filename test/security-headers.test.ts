import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect } from 'node:net'
import { startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'

interface RawAnswer { status: number, headers: Map<string, string[]>, body: string }

/** Sends one raw request (latin1 bytes, so that invalid UTF-8 can be sent) and parses the one answer. */
async function rawRequest (url: string, request: string): Promise<RawAnswer> {
  const socket = connect(Number(new URL(url).port), '127.0.0.1')
  const closed = once(socket, 'close')
  let text = ''
  socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
  socket.on('error', () => {})
  socket.write(Buffer.from(request, 'latin1'))
  await closed
  const [head = '', body = ''] = text.split('\r\n\r\n')
  const [statusLine = '', ...lines] = head.split('\r\n')
  const headers = new Map<string, string[]>()
  for (const line of lines) {
    const colon = line.indexOf(':')
    const name = line.slice(0, colon).toLowerCase()
    headers.set(name, [...(headers.get(name) ?? []), line.slice(colon + 1).trim()])
  }
  return { status: Number(statusLine.split(' ')[1]), headers, body }
}

const get = (path: string, extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n`

test('hop-by-hop and Connection-named headers are stripped both ways; x-dbshift-version cannot be forged', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    res.writeHead(200, {
      connection: 'x-internal-hop',
      'x-internal-hop': 'secret',
      'keep-alive': 'timeout=99',
      'proxy-authenticate': 'Basic',
      upgrade: 'h2c',
      'x-dbshift-version': 'migrated', // an upstream cannot claim the other version either
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(JSON.stringify(req.headers))
    })
    res.end(JSON.stringify(req.headers))
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))

  const answer = await rawRequest(proxy.url, 'GET /h HTTP/1.1\r\nHost: shop.example\r\n' +
    'Connection: close, X-Session-Hop\r\nX-Session-Hop: drop-me\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n' +
    'Trailer: X-Checksum\r\nUpgrade: websocket-ish\r\nProxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n' +
    'X-DBShift-Version: migrated\r\nX-Kept: yes\r\n\r\n')
  assert.equal(answer.status, 200)
  const seen = JSON.parse(answer.body) as Record<string, string>
  for (const name of ['x-session-hop', 'keep-alive', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-connection']) {
    assert.equal(seen[name], undefined, `${name} must not reach the upstream`)
  }
  assert.equal(seen['x-kept'], 'yes')
  assert.equal(seen['x-dbshift-version'], 'legacy', 'the forged tag is replaced by the version dbshift chose')
  assert.equal(seen['x-forwarded-host'], 'shop.example')
  assert.equal(legacy.requests.length, 1)
  assert.equal(migrated.requests.length, 0, 'a forged tag does not choose the version')

  for (const name of ['x-internal-hop', 'keep-alive', 'proxy-authenticate', 'upgrade']) {
    assert.equal(answer.headers.get(name), undefined, `${name} must not reach the client`)
  }
  assert.deepEqual(answer.headers.get('x-dbshift-version'), ['legacy'])
})

test('user keys with control characters, over 256 bytes or not UTF-8 are anonymous', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  // At 100% every identified user is migrated, so landing on legacy means "anonymous".
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { initialPercent: 100 } }))

  const versionOf = async (headers: string): Promise<string | undefined> => {
    const answer = await rawRequest(proxy.url, get('/', headers))
    assert.equal(answer.status, 200, headers)
    return answer.headers.get('x-dbshift-version')?.[0]
  }
  assert.equal(await versionOf('X-User-ID: alice\r\n'), 'migrated')
  assert.equal(await versionOf('X-User-ID: Jos\xc3\xa9\r\n'), 'migrated', 'valid UTF-8 is a real key')
  assert.equal(await versionOf(`X-User-ID: ${'u'.repeat(256)}\r\n`), 'migrated', '256 bytes is still a key')

  assert.equal(await versionOf('X-User-ID: a\tb\r\n'), 'legacy', 'a tab (the one control character HTTP lets through)')
  assert.equal(await versionOf(`X-User-ID: ${'u'.repeat(257)}\r\n`), 'legacy', 'over 256 bytes')
  assert.equal(await versionOf(`X-User-ID: ${'\xc3\xa9'.repeat(129)}\r\n`), 'legacy', '129 two-byte characters are 258 bytes')
  assert.equal(await versionOf('X-User-ID: \xff\xfe\r\n'), 'legacy', 'bytes that are never UTF-8')
  assert.equal(await versionOf('X-User-ID: \xc0\xaf\r\n'), 'legacy', 'an overlong encoding of "/"')
  assert.equal(await versionOf('X-User-ID: abc\xe2\x82\r\n'), 'legacy', 'a truncated sequence')
  assert.equal(await versionOf('X-User-ID: \xed\xa0\x80\r\n'), 'legacy', 'an encoded surrogate')
  assert.equal(await versionOf('X-User-ID:\r\n'), 'legacy', 'empty')

  // Other control characters never get that far: the HTTP parser refuses them.
  for (const byte of ['\x00', '\x1b', '\x7f']) {
    const answer = await rawRequest(proxy.url, get('/', `X-User-ID: a${byte}b\r\n`))
    assert.equal(answer.status, 400)
  }
  assert.equal(legacy.requests.length + migrated.requests.length, 11)
})

test('oversized headers get 431 and oversized request targets 414, without reaching an upstream', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { maxHeaderBytes: 8_192, maxUrlBytes: 2_048 } }))

  assert.equal((await rawRequest(proxy.url, get('/', `X-Big: ${'a'.repeat(9_000)}\r\n`))).status, 431)
  assert.equal((await rawRequest(proxy.url, get('/', `X-A: ${'a'.repeat(3_000)}\r\n`.repeat(4)))).status, 431, 'many headers that add up')
  const longUrl = await rawRequest(proxy.url, get(`/${'p'.repeat(2_100)}`))
  assert.equal(longUrl.status, 414)
  assert.equal((JSON.parse(longUrl.body) as { error: string }).error, 'DBSHIFT_ERR_URI_TOO_LONG')
  assert.equal(legacy.requests.length + migrated.requests.length, 0)

  assert.equal((await rawRequest(proxy.url, get(`/${'p'.repeat(2_000)}`))).status, 200, 'just under the limit passes')
})
