import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { buildApp } from '../src/app.ts'
import { pino } from 'pino'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { ScheduleStore } from '../src/rollout/schedule-store.ts'
import { RolloutControl } from '../src/control/commands.ts'
import { RolloutStore } from '../src/rollout/store.ts'
import { parseSteps, type RampStep } from '../src/rollout/schedule.ts'
import { captureLogs, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

/** Polls Redis (another process's doing) until `check` holds, with a deadline. */
async function until (check: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

test('exactly one instance advances the schedule; when it dies, another takes the lease over and goes on', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const keys = new RolloutKeys('dbshift', 'default')
  const steps = parseSteps(['1', '5', '20', '50'], '30m') as RampStep[]
  const store = new RolloutStore(redis.client, keys)
  await new RolloutControl({ redis: redis.client, store, schedules: new ScheduleStore(redis.client, keys), initialPercent: 0, log: pino({ level: 'silent' }) })
    .startRamp(steps, { by: 'alice', source: 'cli' })

  // The first instance is a real dbshift process: it takes the lease and the first step.
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-lease-'))
  const configPath = join(dir, 'dbshift.yaml')
  writeFileSync(configPath, 'instanceId: doomed\nlisten: 127.0.0.1:0\nadminListen: 127.0.0.1:0\nlog: { level: warn }\nredis: { pollIntervalMs: 100 }\n')
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { ...process.env, DBSHIFT_CONFIG: configPath, REDIS_URL: redis.url, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await until(async () => await redis.client.get(keys.percent) === '1', 'the first instance to take step 1')
  assert.equal(await redis.client.get(keys.scheduleLease), 'doomed')

  // A second instance runs beside it but does not act: the lease is taken.
  const clock = { now: Date.now() }
  const survivor = await buildApp(testConfig(redis.url, legacy.url, migrated.url, { instanceId: 'survivor' }), { log: captureLogs().log, now: () => clock.now })
  await survivor.listen()
  t.after(async () => await survivor.close())
  await survivor.scheduleRunner.tick()
  assert.equal(survivor.scheduleRunner.holding, false)

  // The holder dies without a word; its lease expires and the survivor takes over.
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  await exited
  const takeover = async (): Promise<string | undefined> => (await survivor.store.audit(20)).find((e) => e.fields.action === 'schedule_runner' && e.fields.new === 'survivor')?.fields.reason
  await until(async () => await takeover() !== undefined, 'the survivor to take the lease')
  assert.equal(await redis.client.get(keys.scheduleLease), 'survivor')
  assert.equal(await takeover(), 'took the ramp schedule lease')

  // It goes on from where the dead instance left off: the bake it started still counts.
  clock.now += 30 * 60_000
  await untilRollout(survivor, (s) => s.percent === 5)
  clock.now += 30 * 60_000
  await untilRollout(survivor, (s) => s.percent === 20)
  const setters = (await survivor.store.audit(50)).filter((e) => e.fields.action === 'set_percent').reverse().map((e) => `${e.fields.new}:${e.fields.by}`)
  assert.deepEqual(setters, ['1:doomed', '5:survivor', '20:survivor'])

  // A graceful stop hands the lease back at once (the schedule, at 20% of 50%, is still running).
  assert.equal(await redis.client.get(keys.scheduleLease), 'survivor')
  await survivor.close()
  assert.equal(await redis.client.get(keys.scheduleLease), null)
})
