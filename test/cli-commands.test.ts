import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'
import { startRedis } from './helpers.ts'

interface Run { code: number | null, stdout: string, stderr: string, json: () => Record<string, unknown> }

/** Runs the dbshift command as a real process against the test's own Redis. */
async function dbshift (env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stdout, stderr, json: () => JSON.parse(stdout) as Record<string, unknown> }
}

/** A config file of the test's own, so that the salt and the initial percentage are known. */
const configDir = mkdtempSync(join(tmpdir(), 'dbshift-cli-'))
after(() => { rmSync(configDir, { recursive: true, force: true }) })
let configFiles = 0
function configFile (text: string): string {
  const path = join(configDir, `dbshift-${++configFiles}.yaml`)
  writeFileSync(path, text)
  return path
}

test('set, rollback, resume: exit codes, --json shapes, audit entries and events', async (t) => {
  const redis = await startRedis(t)
  const env = { REDIS_URL: redis.url, DBSHIFT_CONFIG: configFile('rollout:\n  name: shop\n'), DBSHIFT_OPERATOR: 'alice' }
  const events: string[] = []
  const subscriber = redis.client.duplicate()
  t.after(() => subscriber.disconnect())
  await subscriber.subscribe('dbshift:{shop}:events')
  subscriber.on('message', (_channel, message: string) => events.push(message))

  const set = await dbshift(env, 'set', '20', '--reason', 'first ramp', '--json')
  assert.equal(set.code, 0, set.stderr)
  assert.deepEqual(set.json(), { percent: 20, previous: null, state: 'active' })
  assert.equal(await redis.client.get('dbshift:{shop}:percent'), '20')

  const rollback = await dbshift(env, 'rollback', '--reason', 'checkout errors', '--json')
  assert.equal(rollback.code, 0, rollback.stderr)
  assert.deepEqual(rollback.json(), { state: 'rolled_back', changed: true })
  assert.equal(await redis.client.get('dbshift:{shop}:state'), 'rolled_back')
  assert.deepEqual(await redis.client.hgetall('dbshift:{shop}:trip'), { level: 'manual', reason: 'checkout errors', at: (await redis.client.hget('dbshift:{shop}:trip', 'at')) ?? '', by: 'alice' })

  const again = await dbshift(env, 'rollback')
  assert.equal(again.code, 0)
  assert.match(again.stdout, /already rolled back/)

  const resume = await dbshift(env, 'resume', '--json')
  assert.equal(resume.code, 0, resume.stderr)
  assert.deepEqual(resume.json(), { state: 'active', changed: true })

  const audit = await dbshift(env, 'audit', '--count', '10', '--json')
  assert.equal(audit.code, 0, audit.stderr)
  const entries = audit.json().entries as Array<Record<string, string>>
  assert.deepEqual(entries.map((e) => [e.action, e.old, e.new, e.by, e.source]), [
    ['resume', 'rolled_back', 'active', 'alice', 'cli'],
    ['rollback', 'active', 'rolled_back', 'alice', 'cli'],
    ['set_percent', '', '20', 'alice', 'cli']
  ])
  assert.equal(entries[2]?.reason, 'first ramp')
  assert.deepEqual(events.map((e) => (JSON.parse(e) as { action: string }).action), ['set_percent', 'rollback', 'resume'])

  const human = await dbshift(env, 'audit')
  assert.match(human.stdout, /set_percent {2}20 {2}by alice \(cli\) {2}"first ramp"/)
})

test('bad input: a clear message, exit 2, and nothing written', async (t) => {
  const redis = await startRedis(t)
  const env = { REDIS_URL: redis.url, DBSHIFT_CONFIG: configFile('{}\n') }
  const cases: Array<[string[], RegExp]> = [
    [['set', '150'], /"150" is not a percentage: it must be a number from 0 to 100 with at most two decimals/],
    [['set'], /set needs a percentage, --writes or --route/],
    [['set', '--writes', '5.555'], /--writes "5\.555" is not a percentage/],
    [['set', '--route', 'reports'], /--route "reports" must be <name>=<percent>/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['allow', 'add'], /allow add needs a user key/],
    [['deny', 'drop', 'bob'], /"drop" is not an operation: use deny add <user>, deny rm <user> or deny ls/],
    [['ramp', '5', '1'], /step "1": steps must rise/],
    [['which', 'x'.repeat(300)], /a user key is at most 256 bytes/]
  ]
  const runs = await Promise.all(cases.map(async ([args]) => await dbshift(env, ...args)))
  runs.forEach((run, i) => {
    const [args, message] = cases[i] as [string[], RegExp]
    assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`)
    assert.match(run.stderr, message, args.join(' '))
  })
  const json = await dbshift(env, 'set', '-1', '--json')
  assert.equal(json.code, 2)
  assert.deepEqual(Object.keys(json.json()), ['error', 'message'])
  assert.equal(json.json().error, 'DBSHIFT_ERR_INVALID_VALUE')
  assert.equal(await redis.client.dbsize(), 0)
})

test('Redis unreachable: exit 1 with a message naming the URL', async () => {
  const run = await dbshift({ REDIS_URL: 'redis://127.0.0.1:1', DBSHIFT_CONFIG: configFile('{}\n') }, 'status')
  assert.equal(run.code, 1)
  assert.match(run.stderr, /Redis is unreachable: cannot reach redis:\/\/127\.0\.0\.1:1/)
})

test('which: version, bucket and why with the salt of the config file; allow and deny sets; status', async (t) => {
  const redis = await startRedis(t)
  const env = { REDIS_URL: redis.url, DBSHIFT_CONFIG: configFile('rollout:\n  salt: checkout-v2\n'), DBSHIFT_OPERATOR: 'bob' }
  await redis.client.set('dbshift:{default}:percent', '40')
  const [alice, user42, allow] = await Promise.all([
    dbshift(env, 'which', 'alice', '--json'),
    dbshift(env, '--rollout', 'default', 'which', 'user-42'),
    dbshift(env, 'allow', 'add', 'carol', '--json')
  ])
  const deny = await dbshift(env, 'deny', 'add', 'alice')
  // alice is in bucket 3564 with salt checkout-v2 (README): migrated at 40%.
  assert.deepEqual(alice.json(), { user: 'alice', version: 'migrated', why: 'bucket', bucket: 3564, threshold: 4000, percent: 40, state: 'active', strategy: 'hash', salt: 'checkout-v2' })
  assert.match(user42.stdout, /^user-42 → (legacy|migrated): bucket \d+ (<|>=) 4000 \(= 40% × 100\)\n$/)
  assert.deepEqual(allow.json(), { set: 'allow', op: 'add', user: 'carol', changed: true })
  assert.equal(deny.code, 0)

  const [aliceNow, ls, status] = await Promise.all([
    dbshift(env, 'which', 'alice'),
    dbshift(env, 'allow', 'ls', '--json'),
    dbshift(env, 'status', '--json')
  ])
  assert.match(aliceNow.stdout, /alice → legacy: the user is in the deny-set \(always legacy\) \(bucket 3564\)/)
  assert.deepEqual(ls.json(), { set: 'allow', users: ['carol'] })
  const s = status.json()
  assert.equal(s.rollout, 'default')
  assert.equal(s.percent, 40)
  assert.equal(s.state, 'active')
  assert.equal(s.trip, null)
  assert.equal(s.freeze, null)
  assert.equal(s.allow, 1)
  assert.equal(s.deny, 1)
  assert.equal(s.schedule, null)
  assert.deepEqual(s.fleet, { instances: [], behind: 0 })
  assert.ok(['allow_add', 'deny_add'].includes((s.lastChange as Record<string, string>).action))

  const rm = await dbshift(env, 'deny', 'rm', 'alice')
  assert.equal(rm.code, 0)
  assert.match(rm.stdout, /removed alice from the deny-set/)
})

test('set is refused with exit 3 while the L2 guard freezes the ramp; lowering still works', async (t) => {
  const redis = await startRedis(t)
  const env = { REDIS_URL: redis.url, DBSHIFT_CONFIG: configFile('{}\n') }
  await redis.client.set('dbshift:{default}:percent', '20')
  await redis.client.set('dbshift:{default}:freeze', 'db load 0.93 for 3m')
  const [raise, lower] = [await dbshift(env, 'set', '50'), await dbshift(env, 'set', '5')]
  assert.equal(raise.code, 3)
  assert.match(raise.stderr, /the ramp is frozen: db load 0\.93 for 3m/)
  assert.equal(lower.code, 0, lower.stderr)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '5')
})

test('ramp: started once, refused (exit 3) while one is active, with none active, or while rolled back; shown as JSON', async (t) => {
  const redis = await startRedis(t)
  const env = { REDIS_URL: redis.url, DBSHIFT_CONFIG: configFile('{}\n'), DBSHIFT_OPERATOR: 'carol' }
  const none = await dbshift(env, 'ramp', 'pause')
  assert.equal(none.code, 3)
  assert.match(none.stderr, /no ramp schedule is active/)

  const start = await dbshift(env, 'ramp', '1', '5:48h', '20', '--bake', '30m', '--json')
  assert.equal(start.code, 0, start.stderr)
  const schedule = start.json().schedule as Record<string, unknown>
  assert.deepEqual([schedule.status, schedule.step, schedule.by, schedule.steps], ['running', -1, 'carol', [
    { percent: 1, bakeMs: 1_800_000 }, { percent: 5, bakeMs: 172_800_000 }, { percent: 20, bakeMs: 1_800_000 }
  ]])
  const [twice, shown] = await Promise.all([dbshift(env, 'ramp', '50', '100'), dbshift(env, 'ramp')])
  assert.equal(twice.code, 3)
  assert.match(twice.stderr, /a ramp schedule is already active \(running, waiting for a dbshift instance to take step 1 of 3 \(1%\)\); "dbshift ramp abort" it first/)
  assert.equal(shown.stdout, '1% → 5% (2d) → 20%, bake 30m\nrunning, waiting for a dbshift instance to take step 1 of 3 (1%)\n')

  const abort = await dbshift(env, 'ramp', 'abort', '--reason', 'wrong plan')
  assert.equal(abort.code, 0, abort.stderr)
  assert.match(abort.stdout, /^aborted before step 1 of 3: aborted by carol: wrong plan$/m)
  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  const rolledBack = await dbshift(env, 'ramp', '50')
  assert.equal(rolledBack.code, 3)
  assert.match(rolledBack.stderr, /the rollout is rolled back: "dbshift resume" it before starting a ramp/)
})
