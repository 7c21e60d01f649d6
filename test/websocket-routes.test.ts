import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startProxy, startRedis, testConfig, untilRollout } from './helpers.ts'
import { connectAs, refusedHandshake, startWsUpstream, usersInBuckets } from './websocket-helpers.ts'

const ROUTES = [
  { name: 'chat', path: '/chat/**', mode: 'legacy' as const },
  { name: 'beta', path: '/beta/**', mode: 'migrated' as const },
  { name: 'reports', path: '/reports/**', mode: 'split' as const }
]

async function setup (t: Parameters<typeof startRedis>[0], percent: string) {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  await redis.client.set('dbshift:{default}:percent', percent)
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { routes: ROUTES, server: { reconnectSpreadMs: 50 }, rollout: { readYourWritesMs: 600_000 } }))
  await untilRollout(proxy.app, (s) => s.percent === Number(percent))
  return { redis, proxy }
}

test('a WebSocket handshake picks its route by the normalised path, like a request: a legacy route keeps its sockets on legacy', async (t) => {
  const { proxy } = await setup(t, '100')
  const [user] = usersInBuckets(9000, 10000, 1)
  for (const path of ['/chat/room', '//chat//room', '/x/../chat/room', '/%63hat/room', '/chat/room/']) {
    const client = await connectAs(t, proxy.url, user, path)
    assert.equal(client.version, 'legacy', path)
    assert.equal(client.hello.servedBy, 'legacy', path)
  }
  const live = await connectAs(t, proxy.url, user, '/live')
  assert.equal(live.hello.servedBy, 'migrated', 'off the route, the dial decides')

  const refused = await refusedHandshake(proxy.url, user, '/chat%2Froom')
  assert.equal(refused.status, 400, 'a path with no single meaning is refused, never forwarded')
  assert.match(refused.body, /DBSHIFT_ERR_BAD_REQUEST/)

  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_route_requests_total\{route="chat",version="legacy",class="read"\} 5\b/)
  assert.match(metrics, /dbshift_route_requests_total\{route="default",version="migrated",class="read"\} 1\b/)
})

test('a route dial decides a handshake on its route; the write dial holds back nobody\'s socket reads', async (t) => {
  const { redis, proxy } = await setup(t, '50')
  await redis.client.set('dbshift:{default}:write_percent', '0')
  await redis.client.set('dbshift:{default}:route:reports:percent', '2')
  await untilRollout(proxy.app, (s) => s.writePercent === 0 && s.routePercent.get('reports') === 2)
  const [inside] = usersInBuckets(0, 200, 1)
  const [between] = usersInBuckets(200, 5000, 1)
  assert.equal((await connectAs(t, proxy.url, inside, '/reports/live')).hello.servedBy, 'migrated')
  assert.equal((await connectAs(t, proxy.url, between, '/reports/live')).hello.servedBy, 'legacy', 'held back by the route dial')
  assert.equal((await connectAs(t, proxy.url, between, '/live')).hello.servedBy, 'migrated', 'elsewhere, reads follow percent')

  // Read your writes: a user of the split cohort who has just written opens their socket on legacy.
  const wrote = await fetch(`${proxy.url}/orders`, { method: 'POST', headers: { 'x-user-id': between as string }, body: '{}' })
  assert.equal(wrote.headers.get('x-dbshift-version'), 'legacy')
  await wrote.arrayBuffer()
  assert.equal((await connectAs(t, proxy.url, between, '/live')).hello.servedBy, 'legacy', 'within the window after a write')
})

test('a rollout change moves only the sockets whose route now sends their user elsewhere: fixed routes stay put', async (t) => {
  const { redis, proxy } = await setup(t, '0')
  const [user] = usersInBuckets(0, 5000, 1)
  const chat = await connectAs(t, proxy.url, user, '/chat/room')
  const beta = await connectAs(t, proxy.url, user, '/beta/room')
  const live = await connectAs(t, proxy.url, user, '/live')
  assert.deepEqual([chat.hello.servedBy, beta.hello.servedBy, live.hello.servedBy], ['legacy', 'migrated', 'legacy'])

  await redis.client.set('dbshift:{default}:percent', '100')
  assert.equal((await live.closed).code, 1012, 'the default route\'s socket moves to migrated')
  for (const client of [chat, beta]) {
    assert.equal(client.socket.readyState, client.socket.OPEN, 'a socket on a legacy or migrated route is never moved by the dials')
    assert.equal((await client.echo('still here')).data.toString(), 'still here')
  }
})
