import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type Socket } from 'node:net'
import { test, type TestContext } from 'node:test'
import { REDIS_ACL_RULES } from '../src/rollout/redis.ts'
import { REFUSAL_MEMORY_MS } from '../src/rollout/redis-health.ts'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { getAs, nextGuardEvent, startProxy, startProxyProcess, startRedis, startUpstream, testConfig, untilRollout, type TestProxy, type TestRedis } from './helpers.ts'

const keys = new RolloutKeys('dbshift', 'default')
const TOKEN = 'a-token-of-at-least-16-characters'
const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }

interface RedisReport { readyz: string, state: string, connected: boolean, reason: string | null, up: number }

async function redisReport (proxy: TestProxy): Promise<RedisReport> {
  const readyz = await (await fetch(`${proxy.adminUrl}/readyz`)).json() as { redis: string }
  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as { redis: { state: string, connected: boolean, reason: string | null } }
  const up = (await proxy.app.metrics.redisUp.get()).values[0]?.value ?? -1
  return { readyz: readyz.redis, state: status.redis.state, connected: status.redis.connected, reason: status.redis.reason, up }
}

async function until (what: string, check: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** A Redis user for dbshift with the given command rules on the dbshift keys and channels only. */
async function redisUser (redis: TestRedis, name: string, password: string, rules: readonly string[]): Promise<string> {
  await redis.client.call('ACL', 'SETUSER', name, 'reset', 'on', `>${password}`, '~dbshift:*', '&dbshift:*', ...rules)
  return `redis://${name}:${password}@127.0.0.1:${redis.port}`
}

async function rig (t: TestContext, redis: TestRedis, redisUrl: string): Promise<{ proxy: TestProxy, failMigrated: (on: boolean) => void }> {
  let failing = false
  const [legacy, migrated] = await Promise.all([
    startUpstream(t, 'legacy'),
    startUpstream(t, 'migrated', (req, res) => {
      req.resume()
      res.writeHead(failing ? 500 : 200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ servedBy: 'migrated' }))
    })
  ])
  await redis.client.set(keys.percent, '100')
  const proxy = await startProxy(t, testConfig(redisUrl, legacy.url, migrated.url, {
    admin: { token: TOKEN },
    redis: { heartbeatIntervalMs: 200 },
    guards: { l1: { fastMinRequests: 20, evaluateIntervalMs: 100 } }
  }))
  await untilRollout(proxy.app, (s) => s.percent === 100)
  return { proxy, failMigrated: (on) => { failing = on } }
}

test('a Redis user without write permission (NOPERM): reported as refusing, the trip is retried while reads go on, and written once allowed', async (t) => {
  const redis = await startRedis(t)
  const url = await redisUser(redis, 'dbshift', 'reader-pw', [...REDIS_ACL_RULES, '-@write'])
  const { proxy, failMigrated } = await rig(t, redis, url)

  // The heartbeat is a write: refused at once, and said so everywhere.
  await until('the refusal is reported', async () => (await redisReport(proxy)).state === 'refusing')
  const report = await redisReport(proxy)
  assert.deepEqual([report.readyz, report.connected, report.up], ['refusing', true, 0])
  // Redis 7.0 words an ACL refusal inside a script as "ERR … can't run this command", later versions as NOPERM.
  const noperm = /NOPERM|can't run this command/
  assert.match(report.reason ?? '', noperm)
  const logged = proxy.logs.find((line) => String(line.msg).startsWith('Redis refuses commands'))
  assert.ok(logged !== undefined, 'the refusal is logged')
  assert.match(String(logged.reason), noperm)

  // A hard failure trips L1; Redis will not take the rollback.
  failMigrated(true)
  const tripped = nextGuardEvent(proxy.app, 'trip', () => true, 10_000)
  for (let i = 0; i < 40; i++) await getAs(proxy.url, `user-${i}`)
  const [trip, outcome] = await tripped
  assert.equal(outcome, 'pending')
  assert.equal((await getAs(proxy.url, 'user-1')).version, 'legacy')
  assert.ok(!proxy.logs.some((line) => /unreachable/.test(String(line.msg))), 'Redis is reachable: no log line says otherwise')

  // Reads go on while the trip waits: an operator's change made by hand is followed (and the rollback kept).
  await redis.client.set(keys.percent, '40')
  await untilRollout(proxy.app, (s) => s.percent === 40)
  assert.equal(proxy.app.sync.current.state, 'rolled_back')
  assert.equal(proxy.app.sync.rollbackPending, true)

  // Permission granted: the pending trip is written, with this instance's reason, and the refusal clears.
  const persisted = once(proxy.app.sync, 'persisted')
  await redis.client.call('ACL', 'SETUSER', 'dbshift', '+@write')
  await persisted
  assert.equal(await redis.client.get(keys.state), 'rolled_back')
  assert.deepEqual(await redis.client.hgetall(keys.trip), { level: 'L1', reason: trip.reason, at: trip.at, by: trip.by })
  await until('the refusal clears', async () => (await redisReport(proxy)).state === 'connected', REFUSAL_MEMORY_MS + 5_000)
  assert.deepEqual(await redisReport(proxy), { readyz: 'connected', state: 'connected', connected: true, reason: null, up: 1 })
})

test('a full Redis (maxmemory with noeviction, OOM): reported as refusing; a rollback is written once memory is freed', async (t) => {
  const redis = await startRedis(t)
  const { proxy } = await rig(t, redis, redis.url)
  await redis.client.config('SET', 'maxmemory', '1')

  await until('the refusal is reported', async () => (await redisReport(proxy)).state === 'refusing')
  const report = await redisReport(proxy)
  assert.deepEqual([report.readyz, report.up], ['refusing', 0])
  assert.match(report.reason ?? '', /OOM/)

  const rollback = await fetch(`${proxy.adminUrl}/rollback`, { method: 'POST', headers: auth, body: JSON.stringify({ reason: 'orders failing' }) })
  assert.equal(rollback.status, 202)
  assert.equal((await getAs(proxy.url, 'alice')).version, 'legacy')

  const persisted = once(proxy.app.sync, 'persisted')
  await redis.client.config('SET', 'maxmemory', '0')
  await persisted
  assert.equal(await redis.client.get(keys.state), 'rolled_back')
  assert.equal(await redis.client.hget(keys.trip, 'reason'), 'orders failing')
  await until('the refusal clears', async () => (await redisReport(proxy)).state === 'connected', REFUSAL_MEMORY_MS + 5_000)
})

test('a Redis user with exactly the documented ACL rules runs everything dbshift and the dbshift command do, with no command refused', async (t) => {
  const redis = await startRedis(t)
  const url = await redisUser(redis, 'dbshift', 'exact-pw', REDIS_ACL_RULES)
  await redis.client.call('ACL', 'LOG', 'RESET')
  const { proxy, failMigrated } = await rig(t, redis, url)

  const set = await fetch(`${proxy.adminUrl}/rollout`, { method: 'PUT', headers: auth, body: JSON.stringify({ percent: 100 }) })
  assert.equal(set.status, 200)
  failMigrated(true)
  const tripped = nextGuardEvent(proxy.app, 'trip', () => true, 10_000)
  for (let i = 0; i < 40; i++) await getAs(proxy.url, `user-${i}`)
  assert.equal((await tripped)[1], 'tripped')
  failMigrated(false)
  const resume = await fetch(`${proxy.adminUrl}/resume`, { method: 'POST', headers: auth, body: '{}' })
  assert.equal(resume.status, 200)
  await untilRollout(proxy.app, (s) => s.state === 'active')
  await proxy.app.heartbeat.beat()

  // The dbshift command, with the same user.
  for (const args of [['status'], ['set', '10'], ['allow', 'add', 'tester'], ['which', 'tester'], ['rollback', '--reason', 'drill'], ['resume']]) {
    const run = await cli({ REDIS_URL: url, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml', DBSHIFT_OPERATOR: 'oncall' }, args)
    assert.equal(run.code, 0, `dbshift ${args.join(' ')}: ${run.stderr}`)
  }

  assert.deepEqual(await redis.client.call('ACL', 'LOG'), [], 'Redis denied none of dbshift\'s commands')
  assert.equal((await redisReport(proxy)).state, 'connected')
})

/** Runs the dbshift command as a real process. */
async function cli (env: NodeJS.ProcessEnv, args: string[]): Promise<{ code: number | null, stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code] = await once(child, 'close') as [number | null]
  return { code, stderr }
}

/**
 * A server on the Redis port that answers every command with the integer 1, whatever the command: a reply of the
 * wrong shape for nearly everything a client asks.
 */
async function garbageRedis (t: TestContext): Promise<{ url: string, replies: () => number, connections: () => number }> {
  let replies = 0
  let connections = 0
  const sockets = new Set<Socket>()
  const server = createServer((socket) => {
    connections++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    socket.on('data', (chunk) => {
      // One reply per command: each RESP command starts with "*<argc>\r\n$".
      const commands = chunk.toString('latin1').match(/\*\d+\r\n\$/g)?.length ?? 1
      replies += commands
      socket.write(':1\r\n'.repeat(commands))
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(async () => {
    for (const socket of sockets) socket.destroy()
    server.close()
    await once(server, 'close')
  })
  const { port } = server.address() as { port: number }
  return { url: `redis://127.0.0.1:${port}`, replies: () => replies, connections: () => connections }
}

test('a Redis port that answers everything with an integer: the process keeps serving and reports Redis as down', async (t) => {
  const garbage = await garbageRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const proc = await startProxyProcess(t, { REDIS_URL: garbage.url, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url })

  // The control plane keeps talking to it (polls, heartbeats, reconnects) and gets nonsense back each time.
  const repliesAtStart = garbage.replies()
  let served = 0
  await until('100 garbage replies and 3 connections while serving', async () => {
    const res = await fetch(`${proc.url}/orders`, { headers: { 'x-user-id': `user-${served}` } })
    assert.equal(res.status, 200)
    await res.arrayBuffer()
    served++
    return garbage.replies() - repliesAtStart >= 100 && garbage.connections() >= 3
  }, 60_000)
  assert.equal(proc.child.exitCode, null, 'the process is still running')
  for (let i = 0; i < 20; i++) {
    const res = await fetch(`${proc.url}/orders`, { headers: { 'x-user-id': `after-${i}` } })
    assert.equal(res.status, 200)
    await res.arrayBuffer()
  }
  const readyz = await (await fetch(`${proc.adminUrl}/readyz`)).json() as { redis: string }
  assert.equal(readyz.redis, 'disconnected')
  const status = await (await fetch(`${proc.adminUrl}/status`)).json() as { redis: { reason: string } }
  assert.match(status.redis.reason, /wrong shape/)
})
