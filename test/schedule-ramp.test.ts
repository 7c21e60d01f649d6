import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import { buildApp, type App } from '../src/app.ts'
import { parseSteps, type RampStep, type Schedule } from '../src/rollout/schedule.ts'
import { captureLogs, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const MINUTE = 60_000
const OPERATOR = { by: 'alice', source: 'cli' } as const

/** A dbshift instance whose clock the test moves: bakes of 30 minutes and 48 hours pass at once. */
async function startClockedApp (t: TestContext, redisUrl: string, instanceId: string): Promise<{ app: App, clock: { now: number } }> {
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const clock = { now: Date.now() }
  const app = await buildApp(testConfig(redisUrl, legacy.url, migrated.url, { instanceId }), { log: captureLogs().log, now: () => clock.now })
  await app.listen()
  t.after(async () => await app.close())
  return { app, clock }
}

/** Polls the schedule in Redis (an external condition) until it matches, with a deadline. */
async function untilSchedule (app: App, predicate: (s: Schedule) => boolean, timeoutMs = 5_000): Promise<Schedule> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { schedule } = await app.schedules.read()
    if (schedule !== undefined && predicate(schedule)) return schedule
    if (Date.now() > deadline) throw new Error(`the schedule never matched; last: ${JSON.stringify(schedule)}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

function steps (args: string[], bake: string): RampStep[] {
  const parsed = parseSteps(args, bake)
  if (typeof parsed === 'string') throw new Error(parsed)
  return parsed
}

test('a ramp advances through every step, each only after its bake (per-step bakes included), and every step is audited', async (t) => {
  const redis = await startRedis(t)
  const { app, clock } = await startClockedApp(t, redis.url, 'runner-1')
  const { status } = await app.control.startRamp(steps(['1', '5', '20:48h', '100'], '30m'), OPERATOR)
  assert.equal(status, 'ok')

  await untilRollout(app, (s) => s.percent === 1)
  clock.now += 29 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '1', 'not before the bake has passed')

  clock.now += MINUTE
  await untilRollout(app, (s) => s.percent === 5)
  clock.now += 30 * MINUTE
  await untilRollout(app, (s) => s.percent === 20)
  clock.now += 47 * 60 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '20', '20% bakes for 48 hours')
  clock.now += 60 * MINUTE
  await untilRollout(app, (s) => s.percent === 100)
  const done = await untilSchedule(app, (s) => s.status === 'done')
  assert.equal(done.step, 3)

  const entries = (await app.store.audit(100)).reverse().map((e) => e.fields)
  assert.deepEqual(entries.filter((f) => f.action === 'set_percent').map((f) => [f.new, f.by, f.source]), [
    ['1', 'runner-1', 'schedule'], ['5', 'runner-1', 'schedule'], ['20', 'runner-1', 'schedule'], ['100', 'runner-1', 'schedule']
  ])
  assert.deepEqual(entries.filter((f) => f.action === 'schedule_step').map((f) => f.reason), [
    'ramp step 1 of 4', 'ramp step 2 of 4', 'ramp step 3 of 4', 'ramp step 4 of 4 (the last)'
  ])
  assert.equal(entries[0]?.action, 'schedule_start')
  assert.equal(entries[0]?.by, 'alice')
})

test('a freeze holds the ramp and restarts the bake; a guard trip aborts it and nothing advances afterwards', async (t) => {
  const redis = await startRedis(t)
  const { app, clock } = await startClockedApp(t, redis.url, 'runner-1')
  await app.control.startRamp(steps(['1', '5', '20'], '30m'), OPERATOR)
  await untilRollout(app, (s) => s.percent === 1)

  clock.now += 20 * MINUTE
  await app.control.freeze('db load 0.91 for 3m', { by: 'guard-host', source: 'guard' })
  await untilSchedule(app, (s) => s.bakeFrom === null && /frozen by the L2 guard: db load 0.91/.test(s.note))
  clock.now += 60 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '1', 'held while frozen')

  await app.control.unfreeze({ by: 'guard-host', source: 'guard' })
  const restarted = await untilSchedule(app, (s) => s.bakeFrom !== null)
  assert.equal(restarted.bakeFrom, clock.now, 'the bake starts again when the freeze ends')
  clock.now += 29 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '1', 'the time before the freeze does not count')
  clock.now += MINUTE
  await untilRollout(app, (s) => s.percent === 5)

  await app.control.rollback({ level: 'L1', reason: 'migrated error rate 12% over 5m' }, { by: 'guard-host', source: 'guard' })
  const aborted = await untilSchedule(app, (s) => s.status === 'aborted')
  assert.equal(aborted.note, 'rolled back (L1: migrated error rate 12% over 5m)')
  await app.control.resume(OPERATOR)
  clock.now += 120 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '5', 'an aborted schedule takes no further step')
  const actions = (await app.store.audit(100)).map((e) => e.fields.action)
  assert.ok(actions.includes('schedule_hold') && actions.includes('schedule_abort'), actions.join(' '))
})

test('a dial moved by hand pauses the schedule; continue goes on from the new dial without moving anyone back', async (t) => {
  const redis = await startRedis(t)
  const { app, clock } = await startClockedApp(t, redis.url, 'runner-1')
  await app.control.startRamp(steps(['1', '5', '20', '50'], '30m'), OPERATOR)
  await untilRollout(app, (s) => s.percent === 1)
  await app.control.setPercent(25, OPERATOR)
  const paused = await untilSchedule(app, (s) => s.status === 'paused')
  assert.match(paused.note, /the dial was moved to 25% outside the schedule \(it had set 1%\)/)
  await app.control.controlRamp('continue', OPERATOR)
  await untilSchedule(app, (s) => s.status === 'running' && s.bakeFrom !== null)
  clock.now += 30 * MINUTE
  await untilRollout(app, (s) => s.percent === 50)
  const done = await untilSchedule(app, (s) => s.status === 'done')
  assert.equal(done.step, 3, '5% and 20% were skipped: they are below the dial')
})

test('a guard in dry-run mode that would have tripped restarts the bake: the step waits for a whole healthy bake', async (t) => {
  const redis = await startRedis(t)
  const { app, clock } = await startClockedApp(t, redis.url, 'runner-1')
  await app.control.startRamp(steps(['1', '5'], '30m'), OPERATOR)
  await untilRollout(app, (s) => s.percent === 1)

  clock.now += 25 * MINUTE
  const alarmAt = clock.now
  app.guards.events.emit('dryRun', 'L1', 'migrated error rate 7% over 5m')
  app.guards.events.emit('dryRun', 'L1', 'migrated error rate 7% over 5m')
  await untilSchedule(app, (s) => s.bakeFrom === alarmAt)
  clock.now += 10 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '1', '35 minutes into the step, but only 10 since the alarm')
  clock.now += 20 * MINUTE
  await untilRollout(app, (s) => s.percent === 5)
  const holds = (await app.store.audit(50)).filter((e) => e.fields.action === 'schedule_hold')
  assert.deepEqual(holds.map((e) => [e.fields.source, e.fields.reason]), [['guard', 'bake restarted: L1 dry-run alarm: migrated error rate 7% over 5m']], 'a repeated alarm is audited once')
})
