import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import pg from 'pg'
import { freePort, startProxy, startRedis, testConfig, untilRollout } from './helpers.ts'

// The example of docker-compose.yml: one orders service in two versions on a real PostgreSQL, behind dbshift.
const SERVER = fileURLToPath(new URL('../examples/orders-app/server.js', import.meta.url))
const BACKFILL = fileURLToPath(new URL('../examples/orders-app/backfill.js', import.meta.url))
const PG_ADMIN_URL = process.env.DBSHIFT_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

/** A database of the test's own, dropped on teardown. */
async function createDatabase (t: TestContext): Promise<{ url: string, query: (sql: string, params?: unknown[]) => Promise<Array<Record<string, unknown>>> }> {
  const name = `dbshift_orders_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
  await admin.connect().catch((err: Error) => {
    throw new Error(`PostgreSQL is not reachable at ${PG_ADMIN_URL} (${err.message}). Install and start it (Debian: \`apt-get install postgresql\`, ` +
      'trust auth for local connections), or point DBSHIFT_TEST_PG_URL at a server where the user may create databases.', { cause: err })
  })
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

/** Runs one version of the orders app as its container would, on a free loopback port; stopped on teardown. */
async function startOrdersApp (t: TestContext, layout: 'legacy' | 'migrated', databaseUrl: string): Promise<string> {
  const port = await freePort()
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, ORDERS_SCHEMA: layout, DATABASE_URL: databaseUrl, HOST: '127.0.0.1', PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.after(async () => {
    if (child.exitCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    await exited
  })
  let output = ''
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes('listening on')) resolve()
    })
    child.once('exit', (code) => reject(new Error(`orders-app (${layout}) exited with ${String(code)}: ${output}`)))
  })
  return `http://127.0.0.1:${port}`
}

async function call (url: string, user: string, order?: Record<string, unknown>): Promise<{ status: number, version: string | null, body: Record<string, any> }> {
  const res = await fetch(`${url}/orders`, {
    method: order === undefined ? 'GET' : 'POST',
    headers: { 'x-user-id': user, 'content-type': 'application/json' },
    body: order === undefined ? undefined : JSON.stringify(order)
  })
  return { status: res.status, version: res.headers.get('x-dbshift-version'), body: await res.json() as Record<string, any> }
}

const HOME = { street: '1 Quay Street', city: 'Bristol', postcode: 'BS1 4DJ' }

test('the legacy and migrated orders apps serve one user through dbshift across the migration, and a rollback loses nothing', async (t) => {
  const db = await createDatabase(t)
  const redis = await startRedis(t)
  const legacy = await startOrdersApp(t, 'legacy', db.url)
  const migrated = await startOrdersApp(t, 'migrated', db.url)
  const { app, url } = await startProxy(t, testConfig(redis.url, legacy, migrated))

  // 0%: alice orders on the legacy version; the row has the address inline.
  const placed = await call(url, 'alice', { item: 'kettle', quantity: 1, address: HOME })
  assert.equal(placed.status, 201)
  assert.equal(placed.version, 'legacy')
  assert.equal(placed.body.schema, 'legacy')
  assert.equal(placed.body.taggedAs, 'legacy')
  const [legacyRow] = await db.query('SELECT id, ship_city FROM legacy.orders WHERE user_id = $1', ['alice'])
  assert.deepEqual(legacyRow, { id: String(placed.body.order.id), ship_city: 'Bristol' })
  assert.deepEqual(await db.query('SELECT id FROM migrated.orders'), [])

  // The operator backfills, then turns the dial to 100% with a plain redis-cli SET.
  const backfill = spawn(process.execPath, [BACKFILL], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ['ignore', 'pipe', 'inherit'] })
  let backfillOut = ''
  backfill.stdout.on('data', (chunk: Buffer) => { backfillOut += chunk.toString() })
  const [backfillCode] = await once(backfill, 'exit') as [number]
  assert.equal(backfillCode, 0)
  assert.match(backfillOut, /copied 1 orders and 1 addresses/)
  await redis.client.set('dbshift:{default}:percent', '100')
  await untilRollout(app, (s) => s.percent === 100)

  // alice now reads the split layout and still sees her order, under the same id.
  const afterMove = await call(url, 'alice')
  assert.equal(afterMove.version, 'migrated')
  assert.equal(afterMove.body.schema, 'migrated')
  assert.deepEqual(afterMove.body.orders.map((o: { id: number, address: unknown }) => ({ id: o.id, address: o.address })), [{ id: placed.body.order.id, address: HOME }])

  // A second order to the same address reuses the address row; the legacy table gets it too.
  const second = await call(url, 'alice', { item: 'teapot', quantity: 2, address: HOME })
  assert.equal(second.status, 201)
  assert.equal(second.version, 'migrated')
  assert.deepEqual(await db.query('SELECT count(*)::int AS n FROM migrated.addresses WHERE user_id = $1', ['alice']), [{ n: 1 }])
  assert.deepEqual(await db.query('SELECT count(*)::int AS n FROM migrated.orders WHERE user_id = $1', ['alice']), [{ n: 2 }])

  // Roll back: alice is on legacy again and sees both orders.
  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  await untilRollout(app, (s) => s.rolledBack)
  const afterRollback = await call(url, 'alice')
  assert.equal(afterRollback.version, 'legacy')
  assert.equal(afterRollback.body.schema, 'legacy')
  assert.deepEqual(afterRollback.body.orders.map((o: { item: string }) => o.item), ['kettle', 'teapot'])
})

test('the orders app refuses a request without a user or with a bad order, naming the field', async (t) => {
  const db = await createDatabase(t)
  const legacy = await startOrdersApp(t, 'legacy', db.url)
  const anonymous = await fetch(`${legacy}/orders`)
  assert.equal(anonymous.status, 400)
  const bad = await call(legacy, 'bob', { item: 'kettle', quantity: 1, address: { ...HOME, city: '' } })
  assert.equal(bad.status, 400)
  assert.match(bad.body.error, /address\.city/)
  assert.deepEqual(await db.query('SELECT id FROM legacy.orders'), [])
})

test('the compose stack\'s traffic generator sends its users through dbshift to both versions', async (t) => {
  const db = await createDatabase(t)
  const redis = await startRedis(t)
  const legacy = await startOrdersApp(t, 'legacy', db.url)
  const migrated = await startOrdersApp(t, 'migrated', db.url)
  const { app, url } = await startProxy(t, testConfig(redis.url, legacy, migrated))
  await redis.client.set('dbshift:{default}:percent', '50')
  await untilRollout(app, (s) => s.percent === 50)

  const traffic = spawn(process.execPath, [fileURLToPath(new URL('../examples/orders-app/traffic.js', import.meta.url))], {
    env: { ...process.env, TARGET_URL: url, TRAFFIC_REQUESTS: '40', TRAFFIC_RATE: '400', TRAFFIC_USERS: '20' },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let output = ''
  traffic.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const [code] = await once(traffic, 'exit') as [number]
  assert.equal(code, 0)
  const summary = JSON.parse(/sent 40 requests (\{.*\})/.exec(output)?.[1] ?? 'null') as Record<string, number>
  for (const outcome of Object.keys(summary)) assert.match(outcome, /^(legacy|migrated) 20[01]$/)
  assert.ok(summary['legacy 200'] !== undefined && summary['migrated 200'] !== undefined, output)
  assert.equal(Object.values(summary).reduce((a, b) => a + b, 0), 40)
  // Every order it placed was stored (the legacy table holds them all: the migrated version writes both layouts).
  const [{ n }] = await db.query('SELECT count(*)::int AS n FROM legacy.orders') as [{ n: number }]
  assert.equal(n, (summary['legacy 201'] ?? 0) + (summary['migrated 201'] ?? 0))
  assert.ok(n > 0)
})
