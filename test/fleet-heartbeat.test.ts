import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy } from './helpers.ts'
import type { FleetMember } from '../src/fleet/fleet.ts'

async function dbshiftJson (env: NodeJS.ProcessEnv, ...args: string[]): Promise<Record<string, unknown>> {
  const { code, json } = await dbshiftRun(env, ...args)
  assert.equal(code, 0)
  return json
}

async function dbshiftRun (env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: unknown, json: Record<string, unknown> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args, '--json'], { env: { ...process.env, DBSHIFT_CONFIG: '/dev/null', ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  let stdout = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  const code = await new Promise((resolve) => child.once('close', resolve))
  return { code, json: JSON.parse(stdout) as Record<string, unknown> }
}

/** Polls the fleet view (heartbeats written by other instances) until it matches, with a deadline. */
async function untilFleet (adminUrl: string, predicate: (members: FleetMember[]) => boolean, timeoutMs = 5_000): Promise<FleetMember[]> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { instances } = await (await fetch(`${adminUrl}/fleet`)).json() as { instances: FleetMember[] }
    if (predicate(instances)) return instances
    if (Date.now() > deadline) throw new Error(`the fleet never matched: ${JSON.stringify(instances)}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

test('every instance reports what it applies; status lists them and flags the one that lags behind the dial', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const start = async (instanceId: string): Promise<TestProxy> =>
    await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { instanceId, redis: { heartbeatIntervalMs: 200 } }))
  const [a, b, c] = await Promise.all([start('pod-a'), start('pod-b'), start('pod-c')])
  await redis.client.set('dbshift:{default}:percent', '20')
  await Promise.all([a, b, c].map(async (p) => await untilRollout(p.app, (s) => s.percent === 20)))
  for (const user of ['alice', 'bob', 'carol', 'dave']) await getAs(a.url, user)

  const confirmed = await dbshiftJson({ REDIS_URL: redis.url }, 'set', '20', '--wait', '--reason', 'same dial, confirmed')
  assert.deepEqual(confirmed.fleet, { confirmed: true, instances: 3, behind: [] })

  const fleet = await untilFleet(a.adminUrl, (m) => m.length === 3 && m.every((x) => x.percent === 20) && m[0]?.traffic.legacy.rps === 0.3)
  assert.deepEqual(fleet.map((m) => [m.id, m.percent, m.state, m.behind]), [['pod-a', 20, 'active', null], ['pod-b', 20, 'active', null], ['pod-c', 20, 'active', null]])
  // alice (bucket 698) is migrated at 20%; bob, carol and dave are not: 1 + 3 requests over the 10 s window.
  assert.deepEqual(fleet[0]?.traffic, { legacy: { rps: 0.3, errorRate: 0 }, migrated: { rps: 0.1, errorRate: 0 } })

  // pod-c stops following Redis (its sync is stuck) but keeps beating: after the next turn of the dial it lags.
  await c.app.sync.close()
  const set = await dbshiftRun({ REDIS_URL: redis.url }, 'set', '50', '--wait', '1s')
  assert.equal(set.code, 4, 'set --wait exits 4 when an instance does not confirm in time')
  assert.equal(set.json.percent, 50)
  assert.deepEqual(set.json.fleet, { confirmed: false, instances: 3, behind: [{ id: 'pod-c', behind: 'applies 20%, Redis has 50%' }] })
  await untilFleet(a.adminUrl, (m) => m.filter((x) => x.percent === 50).length === 2)
  const status = await dbshiftJson({ REDIS_URL: redis.url }, 'status')
  const { instances, behind } = status.fleet as { instances: FleetMember[], behind: number }
  assert.equal(behind, 1)
  assert.deepEqual(instances.map((m) => [m.id, m.behind]), [['pod-a', null], ['pod-b', null], ['pod-c', 'applies 20%, Redis has 50%']])

  // An invalid value in Redis is ignored by every instance; it is no yardstick for who is behind.
  await redis.client.set('dbshift:{default}:percent', 'abc')
  const invalid = await dbshiftJson({ REDIS_URL: redis.url }, 'status')
  assert.deepEqual(invalid.invalid, [{ key: 'dbshift:{default}:percent', value: 'abc', rule: 'a number from 0 to 100 with at most two decimals' }])
  // pod-c, whose sync stopped, may by now be flagged for not reading Redis, but nobody for the percentage.
  const members = (invalid.fleet as { instances: FleetMember[] }).instances
  assert.deepEqual(members.filter((m) => m.id !== 'pod-c').map((m) => m.behind), [null, null])
  assert.doesNotMatch(members.find((m) => m.id === 'pod-c')?.behind ?? '', /Redis has/)
  await redis.client.set('dbshift:{default}:percent', '50')

  // A graceful stop leaves the fleet view at once.
  await b.close()
  const left = await untilFleet(a.adminUrl, (m) => m.length === 2)
  assert.deepEqual(left.map((m) => m.id), ['pod-a', 'pod-c'])
})
