import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import pg from 'pg'
import { ensureSchema } from './schema.js'

/**
 * The reverse sync of a `reverse_sync` migration: the migrated version writes only its split layout, and this job
 * copies its new orders into the legacy table, under the same ids, so that a rollback finds them there. After each
 * pass it tells dbshift how far behind it is: `dbshift:{N}:signal:reverse_lag` is the age in seconds of the oldest
 * order not copied yet (0 when none), written with an expiry so that a job that stops is soon "unknown".
 *
 * `delayMs` copies only orders older than that: it stands for the replication delay of a real reverse stream.
 */
export async function reverseSyncPass (pool, { delayMs = 0 } = {}) {
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const copied = await client.query(`
      INSERT INTO legacy.orders (id, user_id, item, quantity, ship_street, ship_city, ship_postcode, created_at)
      SELECT m.id, m.user_id, m.item, m.quantity, a.street, a.city, a.postcode, m.created_at
      FROM migrated.orders m
      JOIN migrated.addresses a ON a.id = m.address_id
      LEFT JOIN legacy.orders l ON l.id = m.id
      WHERE l.id IS NULL AND m.created_at <= clock_timestamp() - make_interval(secs => $1::float8 / 1000)
      ON CONFLICT (id) DO NOTHING`, [delayMs])
    const { rows: [{ lag }] } = await client.query(`
      SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(m.created_at)), 0)::float8 AS lag
      FROM migrated.orders m LEFT JOIN legacy.orders l ON l.id = m.id
      WHERE l.id IS NULL`)
    await client.query('COMMIT')
    return { copied: copied.rowCount ?? 0, lagSeconds: Math.round(Number(lag) * 1000) / 1000 }
  } catch (err) {
    await client.query('ROLLBACK')
    throw err
  } finally {
    client.release()
  }
}

// `node reverse-sync.js`: runs until SIGTERM.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const rollout = process.env.DBSHIFT_ROLLOUT ?? 'default'
  const prefix = process.env.DBSHIFT_PREFIX ?? 'dbshift'
  const intervalMs = Number(process.env.REVERSE_SYNC_INTERVAL_MS ?? 1000)
  const delayMs = Number(process.env.REVERSE_SYNC_DELAY_MS ?? 0)
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL })
  const redis = new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', { maxRetriesPerRequest: 1 })
  redis.on('error', (err) => process.stderr.write(`reverse-sync: Redis: ${err.message}\n`))
  await ensureSchema(pool, 'migrated')
  const stop = new AbortController()
  process.once('SIGTERM', () => stop.abort())
  process.stdout.write(`reverse-sync: copying migrated orders into legacy every ${intervalMs} ms\n`)
  while (!stop.signal.aborted) {
    try {
      const { copied, lagSeconds } = await reverseSyncPass(pool, { delayMs })
      await redis.set(`${prefix}:{${rollout}}:signal:reverse_lag`, String(lagSeconds), 'EX', Math.max(3, Math.ceil(intervalMs * 5 / 1000)))
      if (copied > 0) process.stdout.write(`reverse-sync: copied ${copied} orders; ${lagSeconds} s behind\n`)
    } catch (err) {
      process.stderr.write(`reverse-sync: pass failed: ${err.message}\n`)
    }
    await sleep(intervalMs, undefined, { signal: stop.signal }).catch(() => {})
  }
  await pool.end()
  redis.disconnect()
}
