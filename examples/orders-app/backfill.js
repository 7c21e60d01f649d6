import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { ensureSchema } from './schema.js'

/**
 * Copies the orders written by the legacy version into the split layout: one address row per distinct address of
 * a user, then the orders that are not there yet, under their legacy ids. Idempotent; safe to run while both
 * versions serve traffic.
 */
export async function backfill (pool) {
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const addresses = await client.query(`
      INSERT INTO migrated.addresses (user_id, street, city, postcode)
      SELECT DISTINCT l.user_id, l.ship_street, l.ship_city, l.ship_postcode
      FROM legacy.orders l LEFT JOIN migrated.orders m ON m.id = l.id
      WHERE m.id IS NULL
      ON CONFLICT (user_id, street, city, postcode) DO NOTHING`)
    const orders = await client.query(`
      INSERT INTO migrated.orders (id, user_id, item, quantity, address_id, created_at)
      SELECT l.id, l.user_id, l.item, l.quantity, a.id, l.created_at
      FROM legacy.orders l
      JOIN migrated.addresses a ON (a.user_id, a.street, a.city, a.postcode) = (l.user_id, l.ship_street, l.ship_city, l.ship_postcode)
      LEFT JOIN migrated.orders m ON m.id = l.id
      WHERE m.id IS NULL
      ON CONFLICT (id) DO NOTHING`)
    await client.query('COMMIT')
    return { addresses: addresses.rowCount ?? 0, orders: orders.rowCount ?? 0 }
  } catch (err) {
    await client.query('ROLLBACK')
    throw err
  } finally {
    client.release()
  }
}

// `npm run backfill`: one pass, then exit.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL })
  try {
    await ensureSchema(pool, 'migrated')
    const copied = await backfill(pool)
    process.stdout.write(`backfill: copied ${copied.orders} orders and ${copied.addresses} addresses into the migrated layout\n`)
  } finally {
    await pool.end()
  }
}
