import { createServer } from 'node:http'
import pg from 'pg'
import { LAYOUTS, ensureSchema } from './schema.js'
import { createOrder, listOrders } from './orders.js'
import { backfill } from './backfill.js'

/**
 * One version of a small orders service: `ORDERS_SCHEMA=legacy` serves the old layout (address inline in
 * `orders`), `ORDERS_SCHEMA=migrated` the new one (`orders` + `addresses`). dbshift sends each user to one of them.
 *
 *   GET  /orders     the caller's orders (X-User-ID)
 *   POST /orders     {"item": "…", "quantity": 1, "address": {"street": "…", "city": "…", "postcode": "…"}}
 *   GET  /healthz    liveness
 */
const layout = process.env.ORDERS_SCHEMA ?? ''
if (!LAYOUTS.includes(layout)) {
  process.stderr.write(`orders-app: ORDERS_SCHEMA must be one of ${LAYOUTS.join(', ')} (got ${JSON.stringify(layout)})\n`)
  process.exit(2)
}
const host = process.env.HOST ?? '0.0.0.0'
const port = Number(process.env.PORT ?? 3000)
const backfillEveryMs = Number(process.env.ORDERS_BACKFILL_INTERVAL_MS ?? 0)
// `own`: the migrated version writes only its own tables (a reverse sync copies them to legacy); default: both.
const writes = process.env.ORDERS_WRITES === 'own' ? 'own' : 'both'
const MAX_BODY_BYTES = 16_384
const MAX_TEXT = 200

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/orders', max: 10 })
pool.on('error', (err) => process.stderr.write(`orders-app: idle database connection failed: ${err.message}\n`))
await ensureSchema(pool, layout)

// The migrated version keeps its tables caught up with orders the legacy version still takes.
let backfillTimer
if (layout === 'migrated' && backfillEveryMs > 0) {
  const pass = () => backfill(pool).catch((err) => process.stderr.write(`orders-app: backfill failed: ${err.message}\n`))
  await pass()
  backfillTimer = setInterval(pass, backfillEveryMs)
  backfillTimer.unref()
}

const server = createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`orders-app: ${req.method} ${req.url} failed: ${err.message}\n`)
    if (!res.headersSent) send(req, res, 500, { error: 'internal error' })
    else res.destroy()
  })
})

async function handle (req, res) {
  const path = new URL(req.url ?? '/', 'http://x').pathname
  if (path === '/healthz') return send(req, res, 200, { status: 'ok' })
  if (path !== '/orders') return send(req, res, 404, { error: 'not found' })
  const user = req.headers['x-user-id']
  if (typeof user !== 'string' || user === '') return send(req, res, 400, { error: 'the X-User-ID header is required' })
  if (req.method === 'GET') return send(req, res, 200, { user, orders: await listOrders(pool, layout, user) })
  if (req.method !== 'POST') return send(req, res, 405, { error: 'GET or POST' })
  const order = parseOrder(await readBody(req))
  if (typeof order === 'string') return send(req, res, 400, { error: order })
  return send(req, res, 201, { user, order: await createOrder(pool, layout, user, order, writes) })
}

/** Returns the order, or a message saying what is wrong with the body. */
function parseOrder (text) {
  let body
  try { body = JSON.parse(text) } catch { return 'the body must be JSON' }
  const isText = (value) => typeof value === 'string' && value.trim() !== '' && value.length <= MAX_TEXT
  if (!isText(body?.item)) return `item must be a non-empty string of at most ${MAX_TEXT} characters`
  if (!Number.isInteger(body.quantity) || body.quantity < 1 || body.quantity > 1000) return 'quantity must be an integer from 1 to 1000'
  const address = body.address
  for (const field of ['street', 'city', 'postcode']) {
    if (!isText(address?.[field])) return `address.${field} must be a non-empty string of at most ${MAX_TEXT} characters`
  }
  return { item: body.item, quantity: body.quantity, address: { street: address.street, city: address.city, postcode: address.postcode } }
}

async function readBody (req) {
  let size = 0
  const chunks = []
  for await (const chunk of req) {
    size += chunk.length
    if (size > MAX_BODY_BYTES) throw new Error('body too large')
    chunks.push(chunk)
  }
  return Buffer.concat(chunks).toString('utf8')
}

function send (req, res, status, body) {
  // `schema` says which layout answered; `taggedAs` is the version dbshift chose for this request.
  const text = JSON.stringify({ schema: layout, taggedAs: req.headers['x-dbshift-version'] ?? null, ...body })
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'x-orders-schema': layout })
  res.end(text)
}

server.listen(port, host, () => {
  const address = server.address()
  process.stdout.write(`orders-app (${layout}) listening on http://${address.address}:${address.port}\n`)
})

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    clearInterval(backfillTimer)
    server.close(() => { pool.end().finally(() => process.exit(0)) })
    server.closeIdleConnections()
  })
}
