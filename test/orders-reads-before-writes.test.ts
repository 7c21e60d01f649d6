import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import { test, type TestContext } from 'node:test'
import pg from 'pg'
import { freePort, startProxy, startRedis, testConfig, untilRollout } from './helpers.ts'

// The orders example ramping reads before writes on a real PostgreSQL: migrated reads its split layout, fed by
// the forward backfill, which is made slow on purpose (one pass at start, then every 10 minutes), while writes
// stay on legacy; then writes follow.
const EXAMPLE = new URL('../examples/orders-app/', import.meta.url)
const PG_ADMIN_URL = process.env.DBSHIFT_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const SECRET = 'a-cookie-secret-of-at-least-32-characters'
const HOME = { street: '1 Quay Street', city: 'Bristol', postcode: 'BS1 4DJ' }

async function createDatabase (t: TestContext): Promise<string> {
  const name = `dbshift_rbw_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  t.after(async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await admin.end()
  })
  const url = new URL(PG_ADMIN_URL)
  url.pathname = `/${name}`
  return url.href
}

/** One version of the example, started as its container would be; killed on teardown. */
async function startApp (t: TestContext, layout: 'legacy' | 'migrated', databaseUrl: string): Promise<string> {
  const port = await freePort()
  const env = { ORDERS_SCHEMA: layout, DATABASE_URL: databaseUrl, HOST: '127.0.0.1', PORT: String(port), ORDERS_BACKFILL_INTERVAL_MS: '600000' }
  const child: ChildProcess = spawn(process.execPath, [fileURLToPath(new URL('server.js', EXAMPLE))], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
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
      if (output.includes('listening on')) resolve()
    })
    child.once('exit', (code) => reject(new Error(`server.js (${layout}) exited with ${String(code)}: ${output}`)))
  })
  return `http://127.0.0.1:${port}`
}

interface Answer { version: string | null, schema: string, cookie: string | null, orders: number[], order?: number }

async function call (proxyUrl: string, user: string, method: 'GET' | 'POST', cookie?: string): Promise<Answer> {
  const headers: Record<string, string> = { 'x-user-id': user, 'content-type': 'application/json' }
  if (cookie !== undefined) headers.cookie = cookie
  const res = await fetch(`${proxyUrl}/orders`, { method, headers, body: method === 'POST' ? JSON.stringify({ item: 'tea', quantity: 1, address: HOME }) : undefined })
  const body = await res.json() as { schema: string, orders?: Array<{ id: number }>, order?: { id: number } }
  assert.equal(res.status, method === 'POST' ? 201 : 200, JSON.stringify(body))
  return {
    version: res.headers.get('x-dbshift-version'),
    schema: body.schema,
    cookie: res.headers.get('set-cookie')?.split(';')[0] ?? null,
    orders: (body.orders ?? []).map((o) => o.id),
    ...(body.order === undefined ? {} : { order: body.order.id })
  }
}

test('reads before writes on PostgreSQL: a user who writes and reads at once sees their write while the backfill lags; then writes follow', async (t) => {
  const databaseUrl = await createDatabase(t)
  const redis = await startRedis(t)
  const legacy = await startApp(t, 'legacy', databaseUrl)
  const migrated = await startApp(t, 'migrated', databaseUrl)
  // Two instances that share the cookie secret, and one with read your writes off: what a user would see without it.
  const config = (readYourWritesMs: number): ReturnType<typeof testConfig> =>
    testConfig(redis.url, legacy, migrated, { rollout: { readYourWritesMs, cookieSecret: SECRET } })
  const [a, b, off] = await Promise.all([startProxy(t, config(600_000)), startProxy(t, config(600_000)), startProxy(t, config(0))])
  await redis.client.mset('dbshift:{default}:percent', '100', 'dbshift:{default}:write_percent', '0')
  await Promise.all([a, b, off].map(async (p) => await untilRollout(p.app, (s) => s.percent === 100 && s.writePercent === 0)))

  // Reads on migrated (the split layout), writes on legacy.
  const before = await call(a.url, 'alice', 'GET')
  assert.deepEqual([before.version, before.schema, before.orders], ['migrated', 'migrated', []])
  const wrote = await call(a.url, 'alice', 'POST')
  assert.deepEqual([wrote.version, wrote.schema], ['legacy', 'legacy'], 'writes stay on legacy')
  assert.ok(wrote.cookie?.startsWith('dbshift_ryw='), 'the answer to the write carries the read-your-writes cookie')
  const id = wrote.order as number

  // At once, on the instance that took the write (its marker) and on another one (the cookie): the write is there.
  const here = await call(a.url, 'alice', 'GET')
  assert.deepEqual([here.version, here.schema, here.orders], ['legacy', 'legacy', [id]])
  const there = await call(b.url, 'alice', 'GET', wrote.cookie as string)
  assert.deepEqual([there.version, there.schema, there.orders], ['legacy', 'legacy', [id]])
  // Without read your writes the same read lands on migrated, which the slow backfill has not fed yet.
  const stale = await call(off.url, 'alice', 'GET')
  assert.deepEqual([stale.version, stale.schema, stale.orders], ['migrated', 'migrated', []], 'the gap read your writes closes')
  // Another user, who did not write, reads from migrated as before.
  assert.equal((await call(a.url, 'bob', 'GET')).version, 'migrated')

  // The forward backfill catches up (its next pass, run here rather than waited for), then writes follow.
  const { backfill } = await import(fileURLToPath(new URL('backfill.js', EXAMPLE))) as { backfill: (pool: pg.Pool) => Promise<{ orders: number }> }
  const pool = new pg.Pool({ connectionString: databaseUrl })
  try {
    assert.equal((await backfill(pool)).orders, 1)
  } finally {
    await pool.end()
  }
  assert.deepEqual((await call(off.url, 'alice', 'GET')).orders, [id], 'migrated has the write once the backfill has run')

  await redis.client.del('dbshift:{default}:write_percent')
  await Promise.all([a, b, off].map(async (p) => await untilRollout(p.app, (s) => s.writePercent === undefined)))
  const moved = await call(a.url, 'alice', 'POST')
  assert.deepEqual([moved.version, moved.schema], ['migrated', 'migrated'], 'writes follow reads')
  const after = await call(a.url, 'alice', 'GET', wrote.cookie as string)
  assert.equal(after.version, 'migrated', 'once her writes are migrated, so are her reads')
  assert.deepEqual(after.orders.sort((x, y) => x - y), [id, moved.order as number].sort((x, y) => x - y))
})
