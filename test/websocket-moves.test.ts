import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { IncomingMessage } from 'node:http'
import { mock, test } from 'node:test'
import { Registry } from 'prom-client'
import { WebSocket } from 'ws'
import { pino } from 'pino'
import { Metrics } from '../src/metrics.ts'
import { OpenConnections, type OpenConnection } from '../src/proxy/connections.ts'
import { Router, type RoutingState } from '../src/routing/decide.ts'
import { startProxy, startRedis, testConfig, untilRollout } from './helpers.ts'
import { connectAs, startWsUpstream, usersInBuckets, type WsClient } from './websocket-helpers.ts'

const SPREAD_MS = 300

async function setup (t: Parameters<typeof startRedis>[0]) {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  await redis.client.set('dbshift:{default}:percent', '50')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { reconnectSpreadMs: SPREAD_MS } }))
  return { redis, legacy, migrated, proxy }
}

async function connectAll (t: Parameters<typeof startRedis>[0], url: string, users: string[]): Promise<WsClient[]> {
  return await Promise.all(users.map(async (user) => await connectAs(t, url, user)))
}

test('a rollback closes exactly the migrated users\' WebSockets with 1012; legacy ones keep working; the reconnect lands on legacy', async (t) => {
  const { redis, legacy, migrated, proxy } = await setup(t)
  const migratedUsers = usersInBuckets(0, 5000, 8)
  const legacyUsers = usersInBuckets(5000, 10000, 8)
  const onMigrated = await connectAll(t, proxy.url, migratedUsers)
  const onLegacy = await connectAll(t, proxy.url, legacyUsers)
  assert.ok(onMigrated.every((c) => c.hello.servedBy === 'migrated'))
  assert.ok(onLegacy.every((c) => c.hello.servedBy === 'legacy'))

  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  const closes = await Promise.all(onMigrated.map(async (c) => await c.closed))
  assert.deepEqual(closes.map((c) => c.code), migratedUsers.map(() => 1012), 'Service Restart: reconnect')
  for (const client of onLegacy) {
    assert.equal(client.socket.readyState, client.socket.OPEN, 'a user whose version did not change is never touched')
    assert.equal((await client.echo('still here')).data.toString(), 'still here')
  }
  while (migrated.closeCodes.length < migratedUsers.length) await migrated.nextClose()
  assert.deepEqual(migrated.closeCodes, migratedUsers.map(() => 1001), 'the upstream hears going away')
  assert.equal(legacy.closeCodes.length, 0)

  const again = await connectAs(t, proxy.url, migratedUsers[0])
  assert.equal(again.version, 'legacy')
  assert.equal(again.hello.servedBy, 'legacy')
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, new RegExp(`dbshift_connections_moved_total\\{version="migrated"\\} ${migratedUsers.length}\\b`))
  assert.match(metrics, /dbshift_connections_moved_total\{version="legacy"\} 0/)
  assert.match(metrics, /dbshift_open_connections\{version="migrated",kind="websocket"\} 0/)
  assert.match(metrics, new RegExp(`dbshift_open_connections\\{version="legacy",kind="websocket"\\} ${legacyUsers.length + 1}\\b`))
  assert.equal(proxy.app.traffic.totals('migrated', 60_000).errors, 0, 'a move is no error of the version')
})

test('a lowered dial moves only the users above it; the deny- and allow-sets move just their members', async (t) => {
  const { redis, proxy } = await setup(t)
  const staying = usersInBuckets(0, 2500, 4, 'low')
  const moving = usersInBuckets(2500, 5000, 4, 'mid')
  const onLegacy = usersInBuckets(5000, 10000, 2, 'high')
  const stayingClients = await connectAll(t, proxy.url, staying)
  const movingClients = await connectAll(t, proxy.url, moving)
  const legacyClients = await connectAll(t, proxy.url, onLegacy)

  await redis.client.set('dbshift:{default}:percent', '25')
  const closes = await Promise.all(movingClients.map(async (c) => await c.closed))
  assert.ok(closes.every((c) => c.code === 1012))
  for (const client of [...stayingClients, ...legacyClients]) assert.equal((await client.echo('x')).data.toString(), 'x')
  assert.equal((await connectAs(t, proxy.url, moving[0])).hello.servedBy, 'legacy')

  const [denied, ...others] = stayingClients
  await redis.client.sadd('dbshift:{default}:deny', staying[0] as string)
  await redis.client.publish('dbshift:{default}:events', 'deny')
  assert.equal((await denied?.closed)?.code, 1012)
  await untilRollout(proxy.app, (s) => s.deny.size === 1)
  for (const client of others) assert.equal((await client.echo('y')).data.toString(), 'y')
  assert.equal(proxy.app.connections.count('websocket'), others.length + legacyClients.length + 1)

  // The allow-set moves the other way: a legacy user added to it reconnects to migrated.
  const [allowed, ...stillLegacy] = legacyClients
  await redis.client.sadd('dbshift:{default}:allow', onLegacy[0] as string)
  await redis.client.publish('dbshift:{default}:events', 'allow')
  assert.equal((await allowed?.closed)?.code, 1012)
  assert.equal((await connectAs(t, proxy.url, onLegacy[0])).hello.servedBy, 'migrated')
  for (const client of [...others, ...stillLegacy]) assert.equal((await client.echo('z')).data.toString(), 'z')
  const metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_connections_moved_total\{version="legacy"\} 1/)
  assert.match(metrics, new RegExp(`dbshift_connections_moved_total\\{version="migrated"\\} ${moving.length + 1}\\b`))
})

function connection (key: string, version: 'legacy' | 'migrated', closes: number[]): OpenConnection {
  return { key, version, kind: 'websocket', close: async (code) => { closes.push(code) } }
}

test('moves are spread over reconnectSpreadMs, and one whose user moves back before its turn stays', async (t) => {
  mock.timers.enable({ apis: ['setTimeout'] })
  t.after(() => mock.timers.reset())
  const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
  const state = (percent: number, rolledBack = false): RoutingState => ({ percent, rolledBack, allow: new Set(), deny: new Set() })
  let current = state(50)
  const draws = [0, 0.5, 0.999]
  const connections = new OpenConnections({ router, rollout: () => current, metrics: new Metrics(new Registry(), { defaultMetrics: false }), log: pino({ level: 'silent' }), spreadMs: 1_000, random: () => draws.shift() ?? 0 })
  const closes: number[] = []
  const [a, b, c] = usersInBuckets(0, 5000, 3)
  for (const user of [a, b, c]) connections.add(connection(user as string, 'migrated', closes))
  connections.add(connection(usersInBuckets(5000, 10000, 1)[0] as string, 'legacy', closes))

  current = state(50, true)
  connections.reconsider(current)
  mock.timers.tick(0)
  assert.deepEqual(closes, [1012], 'the first draw is due at once')
  mock.timers.tick(499)
  assert.deepEqual(closes, [1012])
  current = state(50) // resumed before the others' turn
  connections.reconsider(current)
  mock.timers.tick(1_000)
  assert.deepEqual(closes, [1012], 'users back on their version before their turn are not touched')
})

test('a handshake still under way when the rollback lands is moved as soon as it opens', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const held: Array<() => void> = []
  let reached = (): void => {}
  const handshakeHeld = new Promise<void>((resolve) => { reached = resolve })
  const migrated = await startWsUpstream(t, 'migrated', {
    verifyClient: (_info, done) => {
      held.push(() => { done(true) })
      reached()
    }
  })
  await redis.client.set('dbshift:{default}:percent', '50')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { reconnectSpreadMs: 100 } }))

  const socket = new WebSocket(proxy.url.replace('http', 'ws') + '/live', { headers: { 'x-user-id': usersInBuckets(0, 5000, 1)[0] as string } })
  t.after(() => { socket.terminate() })
  const upgraded = once(socket, 'upgrade')
  const closed = once(socket, 'close')
  await handshakeHeld // decided migrated, sent, not yet answered
  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  await untilRollout(proxy.app, (s) => s.rolledBack)
  held[0]?.()
  const [res] = await upgraded as [IncomingMessage]
  assert.equal(res.headers['x-dbshift-version'], 'migrated')
  assert.equal((await closed)[0], 1012, 'it missed the change while it was being opened, and moves all the same')
})
