/**
 * Reads and writes one user's orders in either layout. Both return the same shape, so a client cannot tell the
 * versions apart except by the `schema` field the server adds.
 */

/** @typedef {{ street: string, city: string, postcode: string }} Address */

const LEGACY_SELECT = `
  SELECT id, item, quantity, ship_street AS street, ship_city AS city, ship_postcode AS postcode, created_at
  FROM legacy.orders WHERE user_id = $1 ORDER BY id`

const MIGRATED_SELECT = `
  SELECT o.id, o.item, o.quantity, a.street, a.city, a.postcode, o.created_at
  FROM migrated.orders o JOIN migrated.addresses a ON a.id = o.address_id
  WHERE o.user_id = $1 ORDER BY o.id`

const LEGACY_INSERT = `
  INSERT INTO legacy.orders (user_id, item, quantity, ship_street, ship_city, ship_postcode)
  VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at`

// One statement that finds or creates the user's address row (the unique key makes it safe under concurrency).
const ADDRESS_UPSERT = `
  INSERT INTO migrated.addresses (user_id, street, city, postcode) VALUES ($1, $2, $3, $4)
  ON CONFLICT (user_id, street, city, postcode) DO UPDATE SET street = EXCLUDED.street
  RETURNING id`

const MIGRATED_INSERT = `
  INSERT INTO migrated.orders (id, user_id, item, quantity, address_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)`

export async function listOrders (pool, layout, userId) {
  const { rows } = await pool.query(layout === 'legacy' ? LEGACY_SELECT : MIGRATED_SELECT, [userId])
  return rows.map(toOrder)
}

// The id from the legacy sequence, so that the reverse sync can copy the order into legacy under the same id.
const NEXT_ID = "SELECT nextval(pg_get_serial_sequence('legacy.orders', 'id')) AS id, now() AS created_at"

/**
 * Places an order. The migrated layout also writes the legacy row in the same transaction (dual write), unless
 * `writes` is `own`: then it writes only its own tables, and the reverse sync (reverse-sync.js) copies them back.
 */
export async function createOrder (pool, layout, userId, { item, quantity, address }, writes = 'both') {
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    const { rows: [legacy] } = layout === 'migrated' && writes === 'own'
      ? await client.query(NEXT_ID)
      : await client.query(LEGACY_INSERT, [userId, item, quantity, address.street, address.city, address.postcode])
    if (layout === 'migrated') {
      const { rows: [addressRow] } = await client.query(ADDRESS_UPSERT, [userId, address.street, address.city, address.postcode])
      await client.query(MIGRATED_INSERT, [legacy.id, userId, item, quantity, addressRow.id, legacy.created_at])
    }
    await client.query('COMMIT')
    return toOrder({ id: legacy.id, item, quantity, ...address, created_at: legacy.created_at })
  } catch (err) {
    await client.query('ROLLBACK')
    throw err
  } finally {
    client.release()
  }
}

function toOrder (row) {
  return {
    id: Number(row.id),
    item: row.item,
    quantity: row.quantity,
    address: { street: row.street, city: row.city, postcode: row.postcode },
    createdAt: new Date(row.created_at).toISOString()
  }
}
