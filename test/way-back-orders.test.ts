import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { test, type TestContext } from 'node:test'
import pg from 'pg'
import type { App } from '../src/app.ts'
import { freePort, nextGuardEvent, startRedis, untilRollout, type TestRedis } from './helpers.ts'
import { cohorts, keysOf, startWayBackProxy, wayBackConfig } from './way-back-helpers.ts'

// The orders example in reverse_sync on a real PostgreSQL: migrated writes only its split layout, and the
// reverse-sync job copies its orders into the legacy table and writes signal:reverse_lag.
const EXAMPLE = new URL('../examples/orders-app/', import.meta.url)
const PG_ADMIN_URL = process.env.DBSHIFT_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const HOME = { street: '1 Quay Street', city: 'Bristol', postcode: 'BS1 4DJ' }

type Query = (sql: string, params?: unknown[]) => Promise<Array<Record<string, unknown>>>

async function createDatabase (t: TestContext): Promise<{ url: string, query: Query }> {
  const name = `dbshift_wayback_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  const url = new URL(PG_ADMIN_URL)
  url.pathname = `/${name}`
  const client = new pg.Client({ connectionString: url.href })
  await client.connect()
  t.after(async () => {
    await client.end()
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  })
  return { url: url.href, query: async (sql, params) => (await client.query(sql, params)).rows }
}

/** A process of the example, started as its container would be; waits for `ready` on stdout; killed on teardown. */
async function startExample (t: TestContext, script: string, env: NodeJS.ProcessEnv, ready: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [fileURLToPath(new URL(script, EXAMPLE))], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  })
  let output = ''
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes(ready)) resolve()
    })
    child.once('exit', (code) => reject(new Error(`${script} exited with ${String(code)}: ${output}`)))
  })
  return child
}

async function startApp (t: TestContext, layout: 'legacy' | 'migrated', databaseUrl: string): Promise<{ url: string, child: ChildProcess }> {
  const port = await freePort()
  const child = await startExample(t, 'server.js', { ORDERS_SCHEMA: layout, ORDERS_WRITES: 'own', DATABASE_URL: databaseUrl, HOST: '127.0.0.1', PORT: String(port) }, 'listening on')
  return { url: `http://127.0.0.1:${port}`, child }
}

interface Run {
  /** Orders a migrated-cohort user was told were placed (201), with the version that placed them. */
  placed: Array<{ id: number, user: string, version: string }>
  fenced: number
  /** Orders of the cohort missing from legacy when the cohort's first write after the rollback reached legacy. */
  missingAtFirstLegacyWrite: number | undefined
  missingAtEnd: number
}

/**
 * Ramps to 50 % in `mode`, keeps the cohort writing orders, kills the migrated app so that L1 trips, and keeps
 * writing until the cohort's writes land on legacy again; then counts what legacy lacks.
 */
async function run (t: TestContext, mode: 'reverse_sync' | 'dual_write'): Promise<Run> {
  const db = await createDatabase(t)
  const redis: TestRedis = await startRedis(t)
  const rollout = `orders-${mode}`
  const k = keysOf(rollout)
  const legacy = await startApp(t, 'legacy', db.url)
  const migrated = await startApp(t, 'migrated', db.url)
  // A reverse stream with a real delay: an order reaches legacy 1.5 s after it was placed.
  await startExample(t, 'reverse-sync.js', { DATABASE_URL: db.url, REDIS_URL: redis.url, DBSHIFT_ROLLOUT: rollout, REVERSE_SYNC_INTERVAL_MS: '100', REVERSE_SYNC_DELAY_MS: '1500' }, 'copying')
  await redis.client.set(k.percent, '50')
  if (mode === 'reverse_sync') await redis.client.set(k.wayBack, 'reverse_sync')
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout, { guards: { wayBack: { fenceTimeoutMs: 30_000 } } }))
  const app: App = proxy.app
  await nextGuardEvent(app, 'signals', () => app.guards.wayBack.verdict().ready, 10_000)
  // More writers than guards.l1.minUsers (10): a trip needs that many distinct failing users.
  const users = cohorts(app, 50, 12).migrated

  const result: Run = { placed: [], fenced: 0, missingAtFirstLegacyWrite: undefined, missingAtEnd: 0 }
  const missing = async (): Promise<number> => {
    const [{ n }] = await db.query('SELECT count(*)::int AS n FROM migrated.orders m LEFT JOIN legacy.orders l ON l.id = m.id WHERE l.id IS NULL') as [{ n: number }]
    return n
  }
  const stop = { now: false }
  let legacyWritesAfterTrip = 0
  let onLegacyAgain: () => void = () => {}
  const backOnLegacy = new Promise<void>((resolve) => { onLegacyAgain = resolve })
  const writer = async (user: string): Promise<void> => {
    for (let i = 0; !stop.now; i++) {
      const res = await fetch(`${proxy.url}/orders`, { method: 'POST', headers: { 'x-user-id': user, 'content-type': 'application/json' }, body: JSON.stringify({ item: `item-${i}`, quantity: 1, address: HOME }) })
      const body = await res.json() as { order?: { id: number }, error?: string }
      const version = res.headers.get('x-dbshift-version') ?? ''
      if (res.status === 201 && body.order !== undefined) {
        result.placed.push({ id: body.order.id, user, version })
        if (version === 'legacy' && app.sync.current.rolledBack) {
          // The cohort writes to legacy again: how much of its data does legacy have at this moment?
          if (legacyWritesAfterTrip++ === 0) result.missingAtFirstLegacyWrite = await missing()
          if (legacyWritesAfterTrip >= 20) onLegacyAgain()
        }
      } else if (res.status === 503 && body.error === 'DBSHIFT_ERR_WRITES_FENCED') {
        result.fenced++
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }
  const writers = users.map(writer)
  // Orders flow to migrated for a while; then migrated dies under the traffic.
  while (result.placed.filter((p) => p.version === 'migrated').length < 40) await new Promise((resolve) => setTimeout(resolve, 20))
  const tripped = nextGuardEvent(app, 'trip', () => true, 15_000)
  migrated.child.kill('SIGKILL')
  await tripped
  await untilRollout(app, (s) => s.rolledBack)
  await backOnLegacy
  stop.now = true
  await Promise.all(writers)
  // Let the reverse sync finish, then count what legacy lacks of what migrated took.
  for (let i = 0; i < 100 && await missing() > 0; i++) await new Promise((resolve) => setTimeout(resolve, 100))
  const ids = result.placed.map((p) => p.id)
  const [{ n }] = await db.query('SELECT count(*)::int AS n FROM legacy.orders WHERE id = ANY($1::bigint[])', [ids]) as [{ n: number }]
  result.missingAtEnd = ids.length - n
  return result
}

test('the orders example in reverse_sync: the fence holds the cohort\'s writes until the reverse sync catches up, and no order is lost', async (t) => {
  const safe = await run(t, 'reverse_sync')
  const onMigrated = safe.placed.filter((p) => p.version === 'migrated').length
  t.diagnostic(`reverse_sync: ${safe.placed.length} orders placed (${onMigrated} on migrated), ${safe.fenced} writes fenced, ${String(safe.missingAtFirstLegacyWrite)} missing from legacy at the cohort's first write there, ${safe.missingAtEnd} lost`)
  assert.ok(safe.fenced > 0, 'the fence held writes')
  assert.equal(safe.missingAtFirstLegacyWrite, 0, 'the cohort wrote to legacy only once legacy had all its orders')
  assert.equal(safe.missingAtEnd, 0, 'every order any migrated user placed is visible to legacy')

  // The same run with the way back declared as dual_write (which this setup is not): the flip is at once.
  const unsafe = await run(t, 'dual_write')
  t.diagnostic(`without the fence: ${unsafe.placed.length} orders placed, ${unsafe.fenced} writes fenced, ${String(unsafe.missingAtFirstLegacyWrite)} orders missing from legacy at the cohort's first write there`)
  assert.equal(unsafe.fenced, 0)
  assert.ok((unsafe.missingAtFirstLegacyWrite ?? 0) > 0, 'without the fence the cohort wrote to legacy while legacy lacked some of its orders')
})
