/**
 * Steady demo traffic through dbshift, so that the dashboard has something to show: TRAFFIC_USERS users
 * (user-1 … user-N) read their orders and now and then place one, TRAFFIC_RATE requests per second in all.
 * TRAFFIC_REQUESTS bounds the run (0 = until stopped).
 */
const target = process.env.TARGET_URL ?? 'http://127.0.0.1:8080'
const rate = Number(process.env.TRAFFIC_RATE ?? 20)
const users = Number(process.env.TRAFFIC_USERS ?? 200)
const limit = Number(process.env.TRAFFIC_REQUESTS ?? 0)
const CITIES = ['Bristol', 'Leeds', 'Lyon', 'Porto', 'Kraków']

const counts = new Map()
let sent = 0
const stop = new AbortController()
for (const signal of ['SIGTERM', 'SIGINT']) process.once(signal, () => stop.abort())

const done = () => stop.signal.aborted || (limit > 0 && sent >= limit)
while (!done()) {
  const started = Date.now()
  const n = ++sent
  const user = `user-${1 + (n * 7919) % users}`
  const order = n % 10 === 0
    ? { item: `item-${n % 37}`, quantity: 1 + n % 3, address: { street: `${n % 90} High Street`, city: CITIES[n % CITIES.length], postcode: `P${n % 1000}` } }
    : undefined
  const outcome = await fetch(`${target}/orders`, {
    method: order === undefined ? 'GET' : 'POST',
    headers: { 'x-user-id': user, 'content-type': 'application/json' },
    body: order === undefined ? undefined : JSON.stringify(order),
    signal: AbortSignal.timeout(5_000)
  }).then(async (res) => {
    await res.arrayBuffer()
    return `${res.headers.get('x-dbshift-version') ?? 'untagged'} ${res.status}`
  }, (err) => `failed ${err.cause?.code ?? err.name}`)
  counts.set(outcome, (counts.get(outcome) ?? 0) + 1)
  if (n % (rate * 10) === 0) process.stdout.write(`traffic: ${JSON.stringify(Object.fromEntries(counts))}\n`)
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, 1000 / rate - (Date.now() - started))))
}
process.stdout.write(`traffic: sent ${sent} requests ${JSON.stringify(Object.fromEntries(counts))}\n`)
