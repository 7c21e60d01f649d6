import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import type { Redis } from 'ioredis'
import { pino } from 'pino'
import { RolloutControl } from '../src/control/commands.ts'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { RolloutStore } from '../src/rollout/store.ts'
import { ScheduleStore } from '../src/rollout/schedule-store.ts'
import { freePort, getAs, nextGuardEvent, startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy } from './helpers.ts'

const TOKEN = 'control-test-token-0123456789'
const L1 = { fastWindowMs: 2_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 60_000, minRequests: 20, errorRate: 0.05, evaluateIntervalMs: 100 }

/** The command layer as the `dbshift` command builds it: no instance of its own. */
function commands (redis: Redis, rollout: string): RolloutControl {
  const keys = new RolloutKeys('dbshift', rollout)
  return new RolloutControl({ redis, store: new RolloutStore(redis, keys), schedules: new ScheduleStore(redis, keys), initialPercent: 0, log: pino({ level: 'silent' }) })
}

/** A webhook receiver on port 0 that keeps every JSON body; `hold` keeps the answers back. */
async function startWebhook (t: TestContext): Promise<{ url: string, bodies: Array<Record<string, unknown>>, received: (n: number) => Promise<void>, hold: boolean, release: () => void }> {
  const bodies: Array<Record<string, unknown>> = []
  const waiting: Array<{ n: number, resolve: () => void }> = []
  const held: ServerResponse[] = []
  const hook = {
    url: '',
    bodies,
    hold: false,
    received: async (n: number) => {
      if (bodies.length >= n) return
      await new Promise<void>((resolve) => waiting.push({ n, resolve }))
    },
    release: () => { for (const res of held.splice(0)) res.end('ok') }
  }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let text = ''
    req.on('data', (chunk: Buffer) => { text += chunk.toString() })
    req.on('end', () => {
      bodies.push(JSON.parse(text) as Record<string, unknown>)
      for (const w of waiting.filter((w) => bodies.length >= w.n)) w.resolve()
      if (hook.hold) held.push(res)
      else res.end('ok')
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(async () => {
    hook.release()
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  hook.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`
  return hook
}

async function failUntilTripped (proxy: TestProxy): Promise<void> {
  for (let n = 0; !proxy.app.sync.current.rolledBack && n < 400; n++) await getAs(proxy.url, `user-${n}`)
  assert.equal(proxy.app.sync.current.rolledBack, true)
}

test('an instance started after a resume stays active on healthy traffic: the re-arm time is in Redis', async (t) => {
  const redis = await startRedis(t)
  const migrated = { fail: true }
  const legacy = await startUpstream(t, 'legacy')
  const migratedPool = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    res.writeHead(migrated.fail ? 500 : 200, { 'content-type': 'application/json' })
    res.end('{}')
  })
  await redis.client.set('dbshift:{rearm}:percent', '100')
  const config = (id: string): ReturnType<typeof testConfig> => testConfig(redis.url, legacy.url, migratedPool.url, { instanceId: id, rollout: { name: 'rearm' }, guards: { l1: L1, l2: { enabled: false } } })
  const first = await startProxy(t, config('first'))
  await failUntilTripped(first)

  // Resumed by the command line (no instance of its own): only Redis can tell the next instance about it.
  migrated.fail = false
  assert.equal((await commands(redis.client, 'rearm').resume({ by: 'on-call', source: 'cli' }, 'fixed')).status, 'ok')
  await untilRollout(first.app, (s) => !s.rolledBack)
  assert.match(await redis.client.get('dbshift:{rearm}:armed') ?? '', /^\d+$/)

  const later = await startProxy(t, config('later'))
  assert.equal(later.app.sync.current.rolledBack, false)
  const healthy = nextGuardEvent(later.app, 'evaluated', (e) => e.source === 'fleet' && e.totals.fast.migrated.requests >= 20, 8_000)
  const run = { stop: false, sent: 0 }
  const traffic = (async () => {
    while (!run.stop && run.sent < 2_000) assert.equal((await getAs(later.url, `after-${run.sent++}`)).version, 'migrated')
  })()
  const [evaluation] = await healthy.finally(() => { run.stop = true })
  await traffic
  assert.equal(evaluation.totals.long.migrated.errors, 0, 'the failures from before the resume do not count on the new instance')
  assert.equal(evaluation.verdict.trip, false)
  assert.equal(later.app.sync.current.rolledBack, false)
})

test('notify.webhookUrl hears of every trip, rollback, resume and freeze, with a readable text; the action never waits for it', async (t) => {
  const redis = await startRedis(t)
  const hook = await startWebhook(t)
  const migrated = { fail: true }
  const legacy = await startUpstream(t, 'legacy')
  const migratedPool = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    res.writeHead(migrated.fail ? 500 : 200)
    res.end()
  })
  await redis.client.set('dbshift:{notify}:percent', '100')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migratedPool.url, {
    rollout: { name: 'notify' }, admin: { token: TOKEN }, notify: { webhookUrl: hook.url, retries: 0 }, guards: { l1: L1, l2: { enabled: false } }
  }))
  const adminUrl = proxy.adminUrl
  const post = async (path: string): Promise<Response> => await fetch(`${adminUrl}${path}`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })

  await failUntilTripped(proxy)
  await hook.received(1)
  migrated.fail = false
  assert.equal((await post('/resume')).status, 200)
  await hook.received(2)

  // The receiver holds its answer back: the rollback is made and answered all the same.
  hook.hold = true
  assert.equal((await post('/rollback')).status, 200)
  await hook.received(3)
  assert.equal(proxy.app.sync.current.rolledBack, true)
  hook.release()
  hook.hold = false
  assert.equal((await post('/rollback')).status, 200, 'a second rollback is a no-op')
  assert.equal((await proxy.app.control.freeze('db load 0.93', { by: 'db-monitor', source: 'guard' })).status, 'ok')
  await hook.received(4)

  assert.deepEqual(hook.bodies.map((b) => b.event), ['trip', 'resume', 'rollback', 'freeze'], 'no notification for the no-op')
  for (const body of hook.bodies) {
    assert.equal(body.rollout, 'notify')
    assert.match(String(body.text), /^dbshift notify: /)
  }
  assert.match(String(hook.bodies[0]?.text), /rolled back by a guard: everyone is on legacy \(L1\)/)
  assert.match(String(hook.bodies[2]?.text), /rolled back: everyone is on legacy \(manual\) — rolled back through the admin API; by admin@127\.0\.0\.1 \(api\)/)
  assert.match(String(hook.bodies[3]?.text), /ramp frozen.*db load 0\.93/)
})

test('a notification that cannot be delivered is logged with its cause', async (t) => {
  const redis = await startRedis(t)
  const port = await freePort() // nothing listens there
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const config = testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: 'unheard' }, notify: { webhookUrl: `http://127.0.0.1:${port}/hook`, retries: 0 } })
  const proxy = await startProxy(t, config)
  assert.equal((await proxy.app.control.rollback({ reason: 'drill' }, { by: 'alice', source: 'api' })).status, 'ok')
  await proxy.app.control.flush()
  const failure = proxy.logs.find((line) => String(line.msg).startsWith('notification could not be delivered'))
  assert.ok(failure !== undefined, 'a failure line')
  assert.match(String(failure.msg), /ECONNREFUSED/)
  const counted = (await proxy.app.metrics.backgroundErrors.get()).values.find((v) => v.labels.task === 'notify')?.value
  assert.equal(counted, 1, 'counted in dbshift_background_errors_total{task="notify"}')
})

test('no-op changes are neither audited nor announced', async (t) => {
  const redis = await startRedis(t)
  const control = commands(redis.client, 'noop')
  const actor = { by: 'alice', source: 'cli' } as const
  assert.equal((await control.setPercent(20, actor)).status, 'ok')
  assert.equal((await control.setPercent(20, actor)).status, 'noop')
  assert.equal((await control.changeMember('allow', 'add', 'carol', actor)).status, 'ok')
  assert.equal((await control.changeMember('allow', 'add', 'carol', actor)).status, 'noop')
  assert.equal((await control.changeMember('deny', 'rm', 'nobody', actor)).status, 'noop')
  assert.equal((await control.resume(actor)).status, 'noop')
  assert.equal((await control.rollback({}, actor)).status, 'ok')
  assert.equal((await control.rollback({}, actor)).status, 'noop')
  const entries = await redis.client.xrange('dbshift:{noop}:audit', '-', '+')
  assert.deepEqual(entries.map(([, fields]) => fields[fields.indexOf('action') + 1]), ['set_percent', 'allow_add', 'rollback'])
})

test('a user key of the wrong type, or a set key of the wrong Redis type, is refused as a bad value', async (t) => {
  const redis = await startRedis(t)
  const control = commands(redis.client, 'types')
  const actor = { by: 'alice', source: 'cli' } as const
  for (const user of [42, null, '', 'x'.repeat(257)]) {
    const result = await control.changeMember('allow', 'add', user, actor)
    assert.equal(result.status, 'refused')
    assert.equal(result.status === 'refused' && result.code, 'DBSHIFT_ERR_INVALID_VALUE')
  }
  await redis.client.set('dbshift:{types}:deny', 'not a set')
  const result = await control.changeMember('deny', 'add', 'bob', actor)
  assert.deepEqual(result, { status: 'refused', code: 'DBSHIFT_ERR_INVALID_VALUE', message: 'dbshift:{types}:deny holds a value of the wrong Redis type: it must be a set of user keys; fix or delete it by hand' })
})

test('admin API: which answers like the router for long and anonymous keys; a wrong-typed set is a 400; a 404 has the error shape', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  await redis.client.set('dbshift:{which}:percent', '100')
  await redis.client.set('dbshift:{which}:allow', 'not a set')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: 'which' }, admin: { token: TOKEN } }))
  await untilRollout(proxy.app, (s) => s.percent === 100)
  const adminUrl = proxy.adminUrl

  const long = 'u'.repeat(200)
  const answer = await fetch(`${adminUrl}/which/${long}`)
  assert.equal(answer.status, 200)
  const body = await answer.json() as Record<string, unknown>
  assert.deepEqual([body.user, body.version, body.why], [long, 'migrated', 'bucket'])
  assert.equal((await getAs(proxy.url, long)).version, 'migrated', 'the proxy agrees')

  const tab = await (await fetch(`${adminUrl}/which/a%09b`)).json() as Record<string, unknown>
  assert.deepEqual([tab.version, tab.why, tab.bucket], ['legacy', 'anonymous', null], 'a key with a control character is anonymous for the proxy')

  const tooLong = await fetch(`${adminUrl}/which/${'u'.repeat(257)}`)
  assert.equal(tooLong.status, 400)
  assert.equal((await tooLong.json() as Record<string, unknown>).error, 'DBSHIFT_ERR_INVALID_VALUE')

  const wrongType = await fetch(`${adminUrl}/allow/bob`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}` } })
  assert.equal(wrongType.status, 400)
  assert.deepEqual(Object.keys(await wrongType.json() as object), ['error', 'message'])
  const listed = await fetch(`${adminUrl}/allow`)
  assert.equal(listed.status, 400)
  assert.deepEqual(await listed.json(), { error: 'DBSHIFT_ERR_INVALID_VALUE', message: 'dbshift:{which}:allow holds a value of the wrong Redis type: it must be a set of user keys; fix or delete it by hand' })

  const missing = await fetch(`${adminUrl}/no-such-route`)
  assert.equal(missing.status, 404)
  assert.deepEqual(await missing.json(), { error: 'DBSHIFT_ERR_NOT_FOUND', message: 'no such admin route: GET /no-such-route' })
})

test('the dbshift command refuses (exit 5) a rollout that no live instance follows, naming those that have some; --force makes it', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: 'shop' } }))
  await proxy.app.heartbeat.beat()
  const cli = async (...args: string[]): Promise<{ code: number | null, stderr: string }> => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, REDIS_URL: redis.url, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml' }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const [code] = await once(child, 'close') as [number | null]
    return { code, stderr }
  }
  const typo = await cli('--rollout', 'shpo', 'rollback')
  assert.equal(typo.code, 5, typo.stderr)
  assert.match(typo.stderr, /no live dbshift instance follows rollout "shpo"; rollouts with live instances: shop \(1\)/)
  assert.equal(await redis.client.get('dbshift:{shpo}:state'), null, 'nothing was written')
  const forced = await cli('--rollout', 'shpo', '--force', 'set', '5')
  assert.equal(forced.code, 0, forced.stderr)
  assert.equal(await redis.client.get('dbshift:{shpo}:percent'), '5')
  const followed = await cli('--rollout', 'shop', 'set', '5')
  assert.equal(followed.code, 0, followed.stderr)
})
