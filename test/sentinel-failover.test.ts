import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { Agent, request } from 'undici'
import { freePort, startProcess, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const MASTER = 'shop'

/** One redis-sentinel of the test's own, watching `masterPort`; killed on teardown. */
async function startSentinel (t: TestContext, dir: string, masterPort: number): Promise<number> {
  const port = await freePort()
  const conf = join(dir, `sentinel-${port}.conf`)
  await writeFile(conf, [
    `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
    `sentinel monitor ${MASTER} 127.0.0.1 ${masterPort} 1`,
    `sentinel down-after-milliseconds ${MASTER} 1000`,
    `sentinel failover-timeout ${MASTER} 5000`,
    `sentinel parallel-syncs ${MASTER} 1`
  ].join('\n') + '\n')
  await startProcess(t, 'redis-sentinel', [conf], /\+monitor master/)
  return port
}

async function until (what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

test('Sentinel failover under traffic: dbshift follows the new primary with no failed request', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'dbshift-sentinel-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const primary = await startRedis(t)
  const replica = await startRedis(t, ['--replicaof', '127.0.0.1', String(primary.port)])
  await primary.client.set('dbshift:{default}:percent', '50')
  await until('the replica is in sync', async () => await replica.client.get('dbshift:{default}:percent') === '50')
  const sentinels = [await startSentinel(t, dir, primary.port), await startSentinel(t, dir, primary.port)]
  const sentinel = new Redis({ port: sentinels[0], host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 })
  sentinel.on('error', () => {})
  t.after(() => sentinel.disconnect())
  await until('the sentinel knows the replica', async () => ((await sentinel.call('SENTINEL', 'REPLICAS', MASTER)) as unknown[]).length === 1)

  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const url = `redis+sentinel://${sentinels.map((port) => `127.0.0.1:${port}`).join(',')}/${MASTER}`
  const { app, url: proxyUrl } = await startProxy(t, testConfig(url, legacy.url, migrated.url))
  await untilRollout(app, (s) => s.percent === 50)

  // Traffic from 100 users throughout; each must stay on its version.
  const agent = new Agent({ connections: 4 })
  t.after(async () => await agent.close())
  const expected = new Map<string, string>()
  const failed: string[] = []
  let sent = 0
  const state = { stopped: false }
  const send = async (user: string): Promise<string> => {
    sent++
    try {
      const res = await request(`${proxyUrl}/`, { dispatcher: agent, headers: { 'x-user-id': user } })
      await res.body.dump()
      if (res.statusCode !== 200) failed.push(`${user}: ${res.statusCode}`)
      return String(res.headers['x-dbshift-version'])
    } catch (err) {
      failed.push(`${user}: ${(err as Error).message}`)
      return ''
    }
  }
  for (let i = 0; i < 100; i++) expected.set(`u${i}`, await send(`u${i}`))
  const moved: string[] = []
  const loops = Array.from({ length: 4 }, async (_, n) => {
    for (let i = n; !state.stopped; i += 4) {
      const user = `u${i % 100}`
      const version = await send(user)
      if (version !== expected.get(user)) moved.push(user)
    }
  })

  // The primary dies (SHUTDOWN NOSAVE: the process exits at once); the sentinels promote the replica.
  await primary.client.call('SHUTDOWN', 'NOSAVE').catch(() => {})
  await until('the sentinels promote the replica', async () => {
    const [, port] = await sentinel.call('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER) as [string, string]
    return Number(port) === replica.port
  })
  // dbshift follows: a change on the new primary reaches it.
  await until('the new primary accepts writes', async () => await replica.client.set('dbshift:{default}:percent', '50') === 'OK')
  await replica.client.set('dbshift:{default}:percent', '100')
  await untilRollout(app, (s) => s.percent === 100, 20_000)
  await app.control.setPercent(50, { by: 'test', source: 'cli' }) // and dbshift can write through it
  await untilRollout(app, (s) => s.percent === 50, 5_000)
  assert.equal(await replica.client.get('dbshift:{default}:percent'), '50')

  state.stopped = true
  await Promise.all(loops)
  process.stdout.write(`# fault "Sentinel failover (primary killed)": sent ${sent}, failed ${failed.length}\n`)
  assert.deepEqual(failed, [])
  // Between the SET of 100 and the return to 50 some migrated answers are expected; before it, none moved.
  assert.ok(moved.every((user) => expected.get(user) === 'legacy'), 'only moves that the new primary ordered')
})
