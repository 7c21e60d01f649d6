import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { get } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { Router } from '../src/routing/decide.ts'
import { freePort, startRedis, startUpstream } from './helpers.ts'

const TOKEN = 'workers-test-token-0123456789'

/** GET on a new connection each time, so that the cluster hands it to the next worker in turn. */
async function getFresh (url: string, user: string): Promise<string | undefined> {
  return await new Promise((resolve, reject) => {
    get(`${url}/orders`, { agent: false, headers: { 'x-user-id': user } }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.headers['x-dbshift-version'] as string | undefined))
    }).once('error', reject)
  })
}

/** dbshift from its entry file with `workers: 2`, as deployed; resolves once the primary says it listens. */
async function startWorkers (t: TestContext, redisUrl: string, legacy: string, migrated: string, extra: string[] = []): Promise<{ url: string, adminUrl: string, pid: number, exited: Promise<unknown[]> }> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-workers-'))
  const port = await freePort()
  const adminPort = await freePort()
  const file = join(dir, 'dbshift.yaml')
  writeFileSync(file, [
    `listen: 127.0.0.1:${port}`,
    `adminListen: 127.0.0.1:${adminPort}`,
    'workers: 2',
    `pools: { legacy: ['${legacy}'], migrated: ['${migrated}'] }`,
    `redis: { url: '${redisUrl}', pollIntervalMs: 100, fullSyncIntervalMs: 500 }`,
    `admin: { token: '${TOKEN}' }`,
    ...extra
  ].join('\n'))
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, DBSHIFT_CONFIG: file }, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
    rmSync(dir, { recursive: true, force: true })
  })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`dbshift exited with ${String(code)}: ${out}`))
    child.once('exit', onExit)
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (/"role":"primary".*"msg":"dbshift is listening"/.test(out)) {
        child.off('exit', onExit)
        resolve()
      }
    })
  })
  return { url: `http://127.0.0.1:${port}`, adminUrl: `http://127.0.0.1:${adminPort}`, pid: child.pid as number, exited }
}

function metricValue (text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

test('workers: 2 shares one port between two whole instances whose metrics add up and which roll back together', async (t) => {
  const redis = await startRedis(t)
  await redis.client.set('dbshift:{default}:percent', '20')
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const dbshift = await startWorkers(t, redis.url, legacy.url, migrated.url)

  // Two processes, each with its own Redis connections (one named connection per worker and role).
  const names = (await redis.client.client('LIST') as string).split('\n').map((line) => /name=(dbshift:\S+)/.exec(line)?.[1]).filter((n) => n !== undefined)
  assert.equal(new Set(names).size, 2, `one connection name per worker: ${names.join(', ')}`)

  // Every worker routes by the same rule: each user's version is the one the bucket formula gives at 20%.
  const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
  const state = { rolledBack: false, percent: 20, allow: new Set<string>(), deny: new Set<string>() }
  const n = 200
  for (let i = 0; i < n; i++) {
    const user = `worker-user-${i}`
    assert.equal(await getFresh(dbshift.url, user), router.decide(state, user).version, user)
  }

  // The primary's /metrics adds up both workers: all 200 requests, and the gauges are not doubled.
  const metrics = await (await fetch(`${dbshift.adminUrl}/metrics`)).text()
  const total = metricValue(metrics, 'dbshift_requests_total{version="legacy",code="200"}') + metricValue(metrics, 'dbshift_requests_total{version="migrated",code="200"}')
  assert.equal(total, n)
  assert.equal(metricValue(metrics, 'dbshift_rollout_percent'), 20)
  assert.equal(metricValue(metrics, 'dbshift_redis_up'), 1)
  assert.equal(metricValue(metrics, 'dbshift_rolled_back'), 0)

  // A rollback through the primary's admin port reaches both workers: every user goes to legacy.
  const res = await fetch(`${dbshift.adminUrl}/rollback`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason: 'workers test' }) })
  // 200: written to Redis, and the other worker follows through it; 202: Redis did not take it at once, so the
  // primary told every worker directly. Either way every worker routes to legacy now or within moments.
  assert.ok(res.status === 200 || res.status === 202, await res.text())
  const deadline = Date.now() + 2_000
  let versions: Array<string | undefined> = []
  while (Date.now() < deadline) {
    versions = await Promise.all(Array.from({ length: 10 }, async (_, i) => await getFresh(dbshift.url, `worker-user-${i}`)))
    if (versions.every((v) => v === 'legacy')) break
  }
  assert.deepEqual(versions, Array(10).fill('legacy'))
  const after = await (await fetch(`${dbshift.adminUrl}/metrics`)).text()
  assert.equal(metricValue(after, 'dbshift_rolled_back'), 1)
  if (res.status === 200) assert.equal(metricValue(after, 'dbshift_guard_trips_total{level="manual"}'), 1, 'one rollback is counted once')

  // SIGTERM drains both workers and the primary exits cleanly.
  process.kill(dbshift.pid, 'SIGTERM')
  const [code] = await dbshift.exited
  assert.equal(code, 0)
})

test('the L1 guard of each worker judges the sum of both workers, not its own share', async (t) => {
  const redis = await startRedis(t)
  await redis.client.set('dbshift:{default}:percent', '100')
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    res.writeHead(500, { 'content-type': 'text/plain' }).end('broken')
  })
  // 40 failing requests, handed out in turn: 20 per worker, below the 30 either would need on its own.
  const dbshift = await startWorkers(t, redis.url, legacy.url, migrated.url, [
    'guards: { l1: { fastWindowMs: 5000, fastMinRequests: 30, evaluateIntervalMs: 100 } }'
  ])
  const versions: string[] = []
  for (let i = 0; i < 40; i++) versions.push(String(await getFresh(dbshift.url, `failing-user-${i}`)))
  // No trip is possible before the fleet has 30 requests; after that, the trip may already route to legacy.
  assert.deepEqual(versions.slice(0, 29), Array(29).fill('migrated'))

  const deadline = Date.now() + 15_000
  while (await redis.client.get('dbshift:{default}:state') !== 'rolled_back') {
    if (Date.now() > deadline) {
      const status = await (await fetch(`${dbshift.adminUrl}/status`)).text()
      assert.fail(`the fleet-wide error rate never tripped L1: ${status}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.equal(await redis.client.hget('dbshift:{default}:trip', 'level'), 'L1')
  process.kill(dbshift.pid, 'SIGTERM')
  await dbshift.exited
})
