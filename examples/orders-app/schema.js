/**
 * The two layouts of the orders data. `legacy` keeps the shipping address inline in `orders`; `migrated` splits it
 * into `addresses`, shared by a user's orders. Each layout lives in its own PostgreSQL schema of the same name, and
 * order ids come from the legacy sequence in both, so that an order keeps its id across the migration.
 */
export const LAYOUTS = ['legacy', 'migrated']

const LEGACY = `
  CREATE SCHEMA IF NOT EXISTS legacy;
  CREATE TABLE IF NOT EXISTS legacy.orders (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    item text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    ship_street text NOT NULL,
    ship_city text NOT NULL,
    ship_postcode text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE INDEX IF NOT EXISTS orders_user_id ON legacy.orders (user_id);
`

const MIGRATED = `
  CREATE SCHEMA IF NOT EXISTS migrated;
  CREATE TABLE IF NOT EXISTS migrated.addresses (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    street text NOT NULL,
    city text NOT NULL,
    postcode text NOT NULL,
    UNIQUE (user_id, street, city, postcode)
  );
  CREATE TABLE IF NOT EXISTS migrated.orders (
    id bigint PRIMARY KEY,
    user_id text NOT NULL,
    item text NOT NULL,
    quantity integer NOT NULL CHECK (quantity > 0),
    address_id bigint NOT NULL REFERENCES migrated.addresses (id),
    created_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE INDEX IF NOT EXISTS orders_user_id ON migrated.orders (user_id);
`

/** An arbitrary constant: the advisory lock that serialises schema creation between the two versions. */
const DDL_LOCK = 4_242_001

/**
 * Creates the tables a version needs. The migrated version needs both layouts: it reads the new one and, until the
 * legacy version is retired, writes the old one too, so that a rollback to legacy loses no order.
 */
export async function ensureSchema (pool, layout) {
  const client = await pool.connect()
  try {
    await client.query('BEGIN')
    // Both versions may start at once; concurrent CREATE ... IF NOT EXISTS can still collide in the catalog.
    await client.query('SELECT pg_advisory_xact_lock($1)', [DDL_LOCK])
    await client.query(LEGACY)
    if (layout === 'migrated') await client.query(MIGRATED)
    await client.query('COMMIT')
  } catch (err) {
    await client.query('ROLLBACK')
    throw err
  } finally {
    client.release()
  }
}
