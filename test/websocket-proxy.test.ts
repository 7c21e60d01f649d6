import assert from 'node:assert/strict'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'
import { startProxy, startRedis, testConfig } from './helpers.ts'
import { connectAs, startWsUpstream, usersInBuckets } from './websocket-helpers.ts'

async function setup (t: Parameters<typeof startRedis>[0], file: Record<string, unknown> = {}) {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { initialPercent: 50 }, ...file }))
  return { redis, legacy, migrated, proxy }
}

const [legacyUser, migratedUser] = [usersInBuckets(5000, 10000, 1)[0] as string, usersInBuckets(0, 5000, 1)[0] as string]

test('a WebSocket reaches the version its user gets, tagged on the 101, and echoes both ways', async (t) => {
  const { legacy, migrated, proxy } = await setup(t)
  for (const [user, version] of [[legacyUser, 'legacy'], [migratedUser, 'migrated']] as const) {
    const client = await connectAs(t, proxy.url, user)
    assert.equal(client.version, version, 'x-dbshift-version on the 101')
    assert.deepEqual(client.hello, { servedBy: version, tag: version, user }, 'the upstream of that version, told which it is')
    const answer = await client.echo('hello from ' + user)
    assert.equal(answer.data.toString(), 'hello from ' + user)
    assert.equal(answer.isBinary, false)
  }
  assert.equal(legacy.handshakes.length, 1)
  assert.equal(migrated.handshakes.length, 1)
  const seen = migrated.handshakes[0]?.headers ?? {}
  assert.equal(seen['x-forwarded-for'], '127.0.0.1')
  assert.equal(proxy.app.connections.count('websocket'), 2)

  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_requests_total\{version="legacy",code="101"\} 1/)
  assert.match(metrics, /dbshift_requests_total\{version="migrated",code="101"\} 1/)
  assert.match(metrics, /dbshift_open_connections\{version="migrated",kind="websocket"\} 1/)
  assert.equal(proxy.app.traffic.totals('migrated', 60_000).requests, 1, 'the handshake counts in the traffic window')
})

test('binary frames, fragmented messages, ping/pong and a 10 MB message pass untouched', async (t) => {
  const { migrated, proxy } = await setup(t)
  const client = await connectAs(t, proxy.url, migratedUser)

  const binary = randomBytes(70_000) // a 64-bit length field
  const echoed = await client.echo(binary)
  assert.equal(echoed.isBinary, true)
  assert.ok(echoed.data.equals(binary))

  // One message in three frames: the upstream must see it whole, as one message.
  const whole = client.next()
  client.socket.send('frag', { fin: false })
  client.socket.send('ment', { fin: false })
  client.socket.send('ed', { fin: true })
  assert.equal((await whole).data.toString(), 'fragmented')

  const pong = once(client.socket, 'pong')
  client.socket.ping(Buffer.from('are you there'))
  assert.equal(((await pong)[0] as Buffer).toString(), 'are you there', 'the upstream answered the ping through dbshift')
  const [upstreamSide] = [...migrated.wss.clients]
  const clientPing = once(client.socket, 'ping')
  upstreamSide?.ping(Buffer.from('from upstream'))
  assert.equal(((await clientPing)[0] as Buffer).toString(), 'from upstream')

  const big = randomBytes(10 * 1024 * 1024)
  const bigEcho = await client.echo(big)
  assert.equal(bigEcho.data.length, big.length)
  assert.ok(bigEcho.data.equals(big), '10 MB echoed byte for byte')
  assert.equal((await client.echo('still fine')).data.toString(), 'still fine')
})

test('a client closing normally closes the upstream with its code, and the connection is no longer counted', async (t) => {
  const { migrated, proxy } = await setup(t)
  const client = await connectAs(t, proxy.url, migratedUser)
  const removed = once(proxy.app.connections, 'removed')
  const upstreamClosed = migrated.nextClose()
  client.socket.close(4000, 'bye')
  assert.equal(await upstreamClosed, 4000)
  assert.equal((await client.closed).code, 4000, 'the upstream answered the close through dbshift')
  await removed
  assert.equal(proxy.app.connections.count(), 0)
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_open_connections\{version="migrated",kind="websocket"\} 0/)
})

test('an upstream closing the WebSocket reaches the client with its code and reason', async (t) => {
  const { migrated, proxy } = await setup(t)
  const client = await connectAs(t, proxy.url, migratedUser)
  const [upstreamSide] = [...migrated.wss.clients]
  upstreamSide?.close(4001, 'session over')
  assert.deepEqual(await client.closed, { code: 4001, reason: 'session over' })
})
