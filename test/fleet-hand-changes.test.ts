import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { test } from 'node:test'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const TOKEN = 'a-token-of-at-least-16-characters'

/** The audit stream, oldest first, as plain objects. */
async function auditEntries (client: { xrange: (key: string, start: string, end: string) => Promise<Array<[string, string[]]>> }): Promise<Array<Record<string, string>>> {
  const entries = await client.xrange('dbshift:{default}:audit', '-', '+')
  return entries.map(([, flat]) => {
    const fields: Record<string, string> = {}
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string
    return fields
  })
}

async function until (check: () => Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

test('a hand-made SET is noticed by the poll and audited once across the fleet, with old and new value', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const proxies = await Promise.all(['pod-a', 'pod-b', 'pod-c'].map(async (instanceId) =>
    await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { instanceId }))))

  const handSets = async (): Promise<Array<Record<string, string>>> => (await auditEntries(redis.client)).filter((e) => e.action === 'hand_set')
  await redis.client.set('dbshift:{default}:percent', '20')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.percent === 20)))
  await until(async () => (await handSets()).length === 1, 'the first hand-made change to be audited')

  await redis.client.set('dbshift:{default}:percent', '35')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.percent === 35)))
  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.rolledBack)))
  await until(async () => (await handSets()).length >= 3, 'three hand-made changes to be audited')

  const recorded = await handSets()
  assert.deepEqual(recorded.map((e) => [e.key, e.old, e.new, e.source]), [
    ['percent', '', '20', 'redis'],
    ['percent', '20', '35', 'redis'],
    ['state', '', 'rolled_back', 'redis']
  ])
  assert.match(recorded[0]?.reason ?? '', /^dbshift:\{default\}:percent changed outside dbshift; noticed by pod-[abc]$/)
})

test('the audit trail holds every change from every source: cli, api, guard, schedule and redis', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { app, adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { instanceId: 'pod-a', admin: { token: TOKEN } }))
  const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }

  const cli = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'set', '5', '--by', 'alice'], { env: { ...process.env, REDIS_URL: redis.url, DBSHIFT_CONFIG: '/dev/null' }, stdio: 'inherit' })
  assert.equal(await new Promise((resolve) => cli.once('close', resolve)), 0)
  await untilRollout(app, (s) => s.percent === 5)
  assert.equal((await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers, body: '{"percent":10}' })).status, 200)
  const ramp = await fetch(`${adminUrl}/schedule`, { method: 'POST', headers, body: JSON.stringify({ steps: [15, '50:48h'], bake: '1h' }) })
  assert.equal(ramp.status, 201)
  await untilRollout(app, (s) => s.percent === 15)
  await app.control.rollback({ level: 'L1', reason: 'error rate' }, { by: 'pod-a', source: 'guard' })
  assert.equal((await fetch(`${adminUrl}/resume`, { method: 'POST', headers })).status, 200)
  await untilRollout(app, (s) => !s.rolledBack)
  await redis.client.set('dbshift:{default}:percent', '12')
  await until(async () => (await auditEntries(redis.client)).some((e) => e.source === 'redis'), 'the hand-made change to be audited')

  const entries = await auditEntries(redis.client)
  const summary = (source: string): string[] => entries.filter((e) => e.source === source).map((e) => `${e.action} ${e.old}→${e.new}`)
  assert.deepEqual(summary('cli'), ['set_percent →5'])
  assert.deepEqual(summary('api'), ['set_percent 5→10', 'schedule_start →15% → 50%, bake 1h', 'resume rolled_back→active'])
  assert.deepEqual(summary('guard'), ['rollback active→rolled_back'])
  assert.ok(summary('schedule').includes('set_percent 10→15'), summary('schedule').join(', '))
  assert.ok(summary('schedule').includes('schedule_abort 15→15'), summary('schedule').join(', '))
  assert.deepEqual(summary('redis'), ['hand_set 15→12'])
})

test('a hand-made SET of the write dial or a route dial is audited once across the fleet, like the percentage; dbshift\'s own changes are not', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const routes = [{ name: 'reports', path: '/reports/**', mode: 'split' as const }]
  const proxies = await Promise.all(['pod-a', 'pod-b'].map(async (instanceId) =>
    await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { instanceId, routes }))))
  const handSets = async (): Promise<Array<Record<string, string>>> => (await auditEntries(redis.client)).filter((e) => e.action === 'hand_set')

  await proxies[0]?.app.control.setDial(undefined, 5, { by: 'alice', source: 'cli' })
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.writePercent === 5)))
  await redis.client.set('dbshift:{default}:write_percent', '10')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.writePercent === 10)))
  await redis.client.set('dbshift:{default}:route:reports:percent', '2')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.routePercent.get('reports') === 2)))
  await redis.client.del('dbshift:{default}:write_percent')
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.writePercent === undefined)))
  await until(async () => (await handSets()).length >= 3, 'three hand-made changes to be audited')
  await proxies[0]?.app.control.setDial('reports', 3, { by: 'alice', source: 'cli' })
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.routePercent.get('reports') === 3)))
  // Both instances have seen dbshift's own change; give a wrong hand-made record the chance to appear, then check.
  await Promise.all(proxies.map(async (p) => { await p.app.sync.refresh() }))

  const recorded = await handSets()
  assert.deepEqual(recorded.map((e) => [e.key, e.old, e.new, e.source]), [
    ['write_percent', '5', '10', 'redis'],
    ['route:reports:percent', '', '2', 'redis'],
    ['write_percent', '10', '', 'redis']
  ])
  assert.match(recorded[0]?.reason ?? '', /^dbshift:\{default\}:write_percent changed outside dbshift; noticed by pod-[ab]$/)
  assert.match(recorded[2]?.reason ?? '', /^dbshift:\{default\}:write_percent changed outside dbshift \(deleted\); noticed by pod-[ab]$/)
})
