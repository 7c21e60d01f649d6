import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import { buildApp, type App } from '../src/app.ts'
import { parseSteps, type RampStep, type Schedule } from '../src/rollout/schedule.ts'
import { captureLogs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

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

test('a ramp that steps reads and writes: each step sets both dials with their own audit entries; a write dial moved by hand pauses it', async (t) => {
  const redis = await startRedis(t)
  const { app, clock } = await startClockedApp(t, redis.url, 'runner-1')
  const { status } = await app.control.startRamp(steps(['5/0', '20/5', '50/5', '50/50'], '30m'), OPERATOR)
  assert.equal(status, 'ok')

  await untilRollout(app, (s) => s.percent === 5 && s.writePercent === 0)
  clock.now += 30 * MINUTE
  await untilRollout(app, (s) => s.percent === 20 && s.writePercent === 5)
  clock.now += 30 * MINUTE
  await untilRollout(app, (s) => s.percent === 50 && s.writePercent === 5)
  assert.match((await untilSchedule(app, (s) => s.step === 2)).note, /^$/)

  // Writes raised by hand while the step bakes: the schedule stops, as it does for the read dial.
  await app.control.setDial(undefined, 10, OPERATOR)
  const paused = await untilSchedule(app, (s) => s.status === 'paused')
  assert.match(paused.note, /the write dial was moved to 10% outside the schedule \(it had set 5%\)/)
  await app.control.controlRamp('continue', OPERATOR)
  await untilSchedule(app, (s) => s.status === 'running' && s.bakeFrom !== null)
  clock.now += 30 * MINUTE
  await untilRollout(app, (s) => s.percent === 50 && s.writePercent === 50)
  assert.equal((await untilSchedule(app, (s) => s.status === 'done')).step, 3)

  const entries = (await app.store.audit(100)).reverse().map((e) => e.fields)
  assert.deepEqual(entries.filter((f) => f.action === 'set_write_percent').map((f) => [f.old, f.new, f.source]), [
    ['', '0', 'schedule'], ['0', '5', 'schedule'], ['5', '10', 'cli'], ['10', '50', 'schedule']
  ], 'a step that leaves writes where they are writes no entry for them')
})

test('a ramp step that raises only writes is refused while frozen, like a raise by hand; the step waits for the freeze to end', async (t) => {
  const redis = await startRedis(t)
  const { app, clock } = await startClockedApp(t, redis.url, 'runner-1')
  await app.control.startRamp(steps(['20/0', '20/5'], '30m'), OPERATOR)
  await untilRollout(app, (s) => s.percent === 20 && s.writePercent === 0)
  await app.control.freeze('db load 0.93 for 3m', { by: 'guard-host', source: 'guard' })
  assert.equal((await app.control.setDial(undefined, 5, OPERATOR)).status, 'refused', 'a raise of the write dial by hand is refused while frozen')
  await untilSchedule(app, (s) => s.bakeFrom === null)
  clock.now += 60 * MINUTE
  await app.scheduleRunner.tick()
  assert.equal(await redis.client.get('dbshift:{default}:write_percent'), '0', 'the schedule is held too')
  await app.control.unfreeze({ by: 'guard-host', source: 'guard' })
  await untilSchedule(app, (s) => s.bakeFrom !== null)
  clock.now += 30 * MINUTE
  await untilRollout(app, (s) => s.writePercent === 5)
})

test('POST /schedule takes the same reads/writes steps as the command line', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const token = 'a-token-of-at-least-16-characters'
  const { app, adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token } }))
  const post = async (body: unknown): Promise<{ status: number, body: Record<string, unknown> }> => {
    const res = await fetch(`${adminUrl}/schedule`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() as Record<string, unknown> }
  }
  const bad = await post({ steps: ['20/30'] })
  assert.equal(bad.status, 400)
  assert.match(bad.body.message as string, /writes cannot go ahead of reads/)
  const res = await post({ steps: ['5/0', '20/5:48h', 50], bake: '1h' })
  assert.equal(res.status, 201)
  assert.deepEqual((res.body.schedule as Schedule).steps, [{ percent: 5, writePercent: 0, bakeMs: 60 * MINUTE }, { percent: 20, writePercent: 5, bakeMs: 48 * 60 * MINUTE }, { percent: 50, bakeMs: 60 * MINUTE }])
  await untilRollout(app, (s) => s.percent === 5 && s.writePercent === 0)
})
