import { test } from 'node:test'
import assert from 'node:assert/strict'
import { getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestRedis } from './helpers.ts'

const ROLLOUT = 'restart-window'
const L1 = { fastWindowMs: 20_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 300_000, minRequests: 100, errorRate: 0.05, evaluateIntervalMs: 100 }

test('the L1 error window survives a restart through Redis: failures seen before it count after it', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    res.writeHead(500, { 'content-type': 'application/json' })
    res.end('{"error":"boom"}')
  })
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '100')
  const config = (id: string): ReturnType<typeof testConfig> =>
    testConfig(redis.url, legacy.url, migrated.url, { instanceId: id, rollout: { name: ROLLOUT }, guards: { l1: L1, l2: { enabled: false } } })

  // The first life of the instance sees 12 failures (below the 20 the fast window needs), then stops.
  const before = await startProxy(t, config('instance-a'))
  await untilRollout(before.app, (s) => s.percent === 100)
  for (let n = 0; n < 12; n++) assert.equal((await getAs(before.url, `u${n}`)).status, 500)
  // The counts reach Redis at each evaluation (every evaluateIntervalMs); a stop before it would lose the last ones.
  const deadline = Date.now() + 10_000
  while (await sentToRedis(redis.client) < 12 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  await before.close()
  assert.equal((await redis.client.get(`dbshift:{${ROLLOUT}}:state`)), null, 'no trip yet')

  // Its second life starts with an empty local window and sees 10 more: only the 12 kept in Redis make 22.
  const after = await startProxy(t, config('instance-a'))
  await untilRollout(after.app, (s) => s.percent === 100)
  for (let n = 12; n < 22; n++) await getAs(after.url, `u${n}`)
  assert.ok(after.app.traffic.totals('migrated', 60_000).requests <= 10)
  await untilRollout(after.app, (s) => s.rolledBack, 10_000)
  assert.equal(await redis.client.get(`dbshift:{${ROLLOUT}}:state`), 'rolled_back')
})

/** The migrated requests the fleet's slots in Redis hold, in the finest of their slot widths. */
async function sentToRedis (client: TestRedis['client']): Promise<number> {
  const perWidth = new Map<string, number>()
  for (const key of await client.keys(`dbshift:{${ROLLOUT}}:traffic:migrated:*`)) {
    if (key.endsWith(':users')) continue // the slot's failing users (a HyperLogLog), not a count
    const width = key.split(':').at(-2) ?? ''
    const requests = Number((await client.get(key))?.split(' ')[0] ?? 0)
    perWidth.set(width, (perWidth.get(width) ?? 0) + requests)
  }
  return perWidth.size === 0 ? 0 : Math.min(...perWidth.values())
}
