import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { getAs, nextGuardEvent, startProxy, startRedis, startUpstream, untilRollout } from './helpers.ts'
import { parseSteps } from '../src/rollout/schedule.ts'
import { nextMemberChange, poolConfig } from './health-helpers.ts'

const TOKEN = 'a-token-of-sixteen-characters'

/** An app whose /health answers 503 while `dead()`. */
function app (name: string, dead: () => boolean) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    req.resume()
    const status = req.url === '/health' && dead() ? 503 : 200
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify({ servedBy: name }))
  }
}

async function setPercent (adminUrl: string, percent: number): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ percent }) })
  return { status: res.status, body: await res.json() as Record<string, unknown> }
}

async function dbshift (env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number | null, stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stderr }
}

const checks = { path: '/health', intervalMs: 100, timeoutMs: 500, unhealthyAfter: 1, healthyAfter: 1 }

test('no raise onto a migrated pool with no healthy member, from the API or the dbshift command; lowering still works', async (t) => {
  const redis = await startRedis(t)
  const state = { dead: true }
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', app('migrated', () => state.dead))
  const proxy = await startProxy(t, poolConfig(redis.url, { legacy: [legacy.url], migrated: { members: [migrated.url], healthCheck: checks } }, { admin: { token: TOKEN }, redis: { heartbeatIntervalMs: 100 } }))
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && !change.serving)
  assert.equal(proxy.app.poolHealth.migratedHealthy(), false, 'health checks of migrated run at 0%')
  await redis.client.sadd('dbshift:{default}:allow', 'tester')
  await untilRollout(proxy.app, (s) => s.allow.has('tester'))
  const tester = await getAs(proxy.url, 'tester')
  assert.equal(tester.body.servedBy, 'migrated', 'with no member healthy, requests still go to the members rather than to none')

  const refused = await setPercent(proxy.adminUrl, 5)
  assert.equal(refused.status, 409)
  assert.equal(refused.body.error, 'DBSHIFT_ERR_POOL_UNHEALTHY')
  assert.match(String(refused.body.message), /no member of the migrated pool passes its health checks/)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null, 'nothing was written')

  await proxy.app.heartbeat.beat() // the command reads the health the instances publish
  const cli = await dbshift({ REDIS_URL: redis.url, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml', DBSHIFT_OPERATOR: 'op' }, 'set', '5')
  assert.equal(cli.code, 3, cli.stderr)
  assert.match(cli.stderr, /sees a healthy member of the migrated pool/)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null)

  assert.equal((await setPercent(proxy.adminUrl, 0)).status, 200, 'a change that is no raise is not refused')

  state.dead = false
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && change.serving)
  const allowed = await setPercent(proxy.adminUrl, 5)
  assert.equal(allowed.status, 200, JSON.stringify(allowed.body))
  await proxy.app.heartbeat.beat()
  const raised = await dbshift({ REDIS_URL: redis.url, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml', DBSHIFT_OPERATOR: 'op' }, 'set', '6')
  assert.equal(raised.code, 0, raised.stderr)
})

test('above 0%, a migrated pool that stays without a healthy member for guards.l1.unhealthyPoolMs trips L1', async (t) => {
  const redis = await startRedis(t)
  const state = { dead: false }
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', app('migrated', () => state.dead))
  const proxy = await startProxy(t, poolConfig(redis.url, { legacy: [legacy.url], migrated: { members: [migrated.url], healthCheck: checks } }, { guards: { l1: { unhealthyPoolMs: 300 } } }))
  await redis.client.set('dbshift:{default}:percent', '10')
  await untilRollout(proxy.app, (s) => s.percent === 10)

  const tripped = nextGuardEvent(proxy.app, 'trip', (trip) => trip.level === 'L1')
  state.dead = true
  const [trip] = await tripped
  assert.match(trip.reason, /the migrated pool has had no healthy member for [\d.]+ s \(guards\.l1\.unhealthyPoolMs 300\)/)
  assert.equal(proxy.app.sync.current.rolledBack, true)
  assert.equal(await redis.client.hget('dbshift:{default}:trip', 'level'), 'L1')
})

test('a ramp step waits while the migrated pool has no healthy member, and is taken once a member is healthy again', async (t) => {
  const redis = await startRedis(t)
  const state = { dead: true }
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', app('migrated', () => state.dead))
  const proxy = await startProxy(t, poolConfig(redis.url, { legacy: [legacy.url], migrated: { members: [migrated.url], healthCheck: checks } }))
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && !change.serving)

  const steps = parseSteps(['5', '10'], '30m')
  if (typeof steps === 'string') throw new Error(steps)
  assert.equal((await proxy.app.control.startRamp(steps, { by: 'alice', source: 'cli' })).status, 'ok')
  await proxy.app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null, 'the first step waits')
  assert.equal((await proxy.app.schedules.read()).schedule?.step, -1)
  assert.ok(proxy.logs.some((line) => line.msg === 'ramp schedule step deferred' && line.result === 'unhealthy'))

  state.dead = false
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && change.serving)
  await proxy.app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '5')
})

test('a ramp step that waits is logged once per reason, not at every check', async (t) => {
  const redis = await startRedis(t)
  const state = { dead: true }
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', app('migrated', () => state.dead))
  const proxy = await startProxy(t, poolConfig(redis.url, { legacy: [legacy.url], migrated: { members: [migrated.url], healthCheck: checks } }))
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && !change.serving)

  const steps = parseSteps(['5', '10'], '30m')
  if (typeof steps === 'string') throw new Error(steps)
  assert.equal((await proxy.app.control.startRamp(steps, { by: 'alice', source: 'cli' })).status, 'ok')
  for (let i = 0; i < 5; i++) await proxy.app.scheduleRunner.tick()
  const deferred = (): Array<Record<string, unknown>> => proxy.logs.filter((line) => line.msg === 'ramp schedule step deferred')
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null, 'the step waits')
  assert.deepEqual(deferred().map((line) => [line.result, line.action]), [['unhealthy', 'schedule_step']], 'one line while it waits for the same reason')

  state.dead = false
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && change.serving)
  await proxy.app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '5')
  assert.equal(deferred().length, 1)
})
