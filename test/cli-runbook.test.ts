import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { test } from 'node:test'
import { buildApp } from '../src/app.ts'
import { captureLogs, getAs, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

interface Run { code: number | null, stdout: string, stderr: string }

async function dbshift (redisUrl: string, ...args: string[]): Promise<Run> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    env: { ...process.env, REDIS_URL: redisUrl, DBSHIFT_CONFIG: '/dev/null', DBSHIFT_OPERATOR: 'oncall' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stdout, stderr }
}

test('a whole migration with the dbshift command alone: ramp, watch, roll back, resume, finish at 100%', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const clock = { now: Date.now() }
  const app = await buildApp(testConfig(redis.url, legacy.url, migrated.url, { instanceId: 'pod-a', redis: { heartbeatIntervalMs: 200 } }), { log: captureLogs().log, now: () => clock.now })
  const { proxy } = await app.listen()
  t.after(async () => await app.close())
  const url = `http://127.0.0.1:${proxy.port}`

  const ramp = await dbshift(redis.url, 'ramp', '1', '50', '100', '--bake', '30m')
  assert.equal(ramp.code, 0, ramp.stderr)
  assert.match(ramp.stdout, /^ramp started: 1% → 50% → 100%, bake 30m/)
  await untilRollout(app, (s) => s.percent === 1)

  // watch follows the next step as it happens, then stops after the two entries it records.
  const watch = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'watch', '--json', '--count', '2', '--interval', '10s'], {
    env: { ...process.env, REDIS_URL: redis.url, DBSHIFT_CONFIG: '/dev/null' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  t.after(() => { if (watch.exitCode === null) watch.kill() })
  const lines = createInterface({ input: watch.stdout })[Symbol.asyncIterator]()
  const next = async (): Promise<Record<string, unknown>> => JSON.parse((await lines.next()).value as string) as Record<string, unknown>
  assert.equal((await next()).type, 'watching')
  const rates = await next()
  assert.equal(rates.type, 'rates')
  assert.equal(rates.percent, 1)
  clock.now += 30 * 60_000
  const changes = [await next(), await next()]
  assert.deepEqual(changes.map((c) => [c.type, c.action, c.new, c.source]), [['change', 'set_percent', '50', 'schedule'], ['change', 'schedule_step', '50', 'schedule']])
  const watchExit = await new Promise((resolve) => watch.once('close', resolve))
  assert.equal(watchExit, 0)
  await untilRollout(app, (s) => s.percent === 50)

  const rollback = await dbshift(redis.url, 'rollback', '--reason', 'orders 500s on migrated')
  assert.equal(rollback.code, 0, rollback.stderr)
  await untilRollout(app, (s) => s.rolledBack)
  assert.equal((await getAs(url, 'alice')).version, 'legacy')

  const resume = await dbshift(redis.url, 'resume', '--reason', 'fix deployed')
  assert.equal(resume.code, 0, resume.stderr)
  assert.match(resume.stdout, /resumed: the rollout follows the percentage again \(50%\)/)
  await untilRollout(app, (s) => !s.rolledBack && s.percent === 50)

  // The rollback aborted the first schedule; a new one finishes the migration.
  const finish = await dbshift(redis.url, 'ramp', '100')
  assert.equal(finish.code, 0, finish.stderr)
  await untilRollout(app, (s) => s.percent === 100)
  assert.equal((await getAs(url, 'bob')).version, 'migrated')

  const status = await dbshift(redis.url, 'status')
  assert.equal(status.code, 0, status.stderr)
  assert.match(status.stdout, /^percent {6}100%$/m)
  assert.match(status.stdout, /^state {8}active$/m)
  assert.match(status.stdout, /^ramp {9}done: 100% reached$/m)
  assert.match(status.stdout, /^last change {2}.* schedule_step {2}50 → 100 {2}by pod-a \(schedule\) {2}"ramp step 1 of 1 \(the last\)"$/m)
  assert.match(status.stdout, /^fleet {8}1 instance, all on the shared state$/m)

  const audit = await dbshift(redis.url, 'audit', '--count', '50', '--json')
  const actions = (JSON.parse(audit.stdout) as { entries: Array<{ action: string }> }).entries.map((e) => e.action).reverse()
  assert.deepEqual(actions.filter((a) => !a.startsWith('schedule_runner')), [
    'schedule_start', 'set_percent', 'schedule_step', 'set_percent', 'schedule_step', 'rollback', 'schedule_abort', 'resume',
    'schedule_start', 'set_percent', 'schedule_step'
  ])
})
