import assert from 'node:assert/strict'
import type { IncomingMessage } from 'node:http'
import { test } from 'node:test'
import { getAs, nextGuardEvent, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const ROLLOUT = 'trust-stuck'
const L1 = { fastWindowMs: 10_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 60_000, minRequests: 100, evaluateIntervalMs: 100 }

test('a hung migrated pool (accepts, never answers) trips L1 after guards.l1.stuckMs, while its requests still wait', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const held: IncomingMessage[] = []
  const hung = await startUpstream(t, 'migrated', (req) => { held.push(req) }) // reads the request, never answers
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '100')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, hung.url, {
    rollout: { name: ROLLOUT },
    guards: { l1: { ...L1, stuckMs: 1_000 }, l2: { enabled: false } },
    upstream: { headersTimeoutMs: 60_000 } // far beyond the test: only the stuck rule can act
  }))
  await untilRollout(proxy.app, (s) => s.percent === 100)

  const abort = new AbortController()
  let settled = 0
  const waiting = Array.from({ length: 25 }, async (_, i) => {
    await fetch(`${proxy.url}/checkout`, { headers: { 'x-user-id': `shopper-${i}` }, signal: abort.signal }).then(() => {}, () => {})
    settled++
  })
  const snapshot = await untilRollout(proxy.app, (s) => s.rolledBack, 15_000)
  assert.equal(snapshot.trip?.level, 'L1')
  assert.equal(settled, 0, 'tripped while every hung request was still waiting: not after the upstream timeout')
  assert.equal(held.length, 25)
  // New requests go to legacy at once.
  assert.equal((await getAs(proxy.url, 'shopper-0')).version, 'legacy')
  abort.abort()
  await Promise.all(waiting)
  for (const req of held) req.socket.destroy()
  // The stuck requests were counted once each, not again when they ended.
  assert.ok(proxy.app.traffic.totals('migrated', 60_000).errors <= 25)
})

test('a slow upload is not a stuck upstream: the stuck clock starts when the body has arrived', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '100')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: ROLLOUT }, guards: { l1: { ...L1, stuckMs: 200 }, l2: { enabled: false } } }))
  await untilRollout(proxy.app, (s) => s.percent === 100)
  const body = new ReadableStream({
    async start (controller) {
      for (let i = 0; i < 4; i++) {
        controller.enqueue(new TextEncoder().encode('chunk'))
        await new Promise((resolve) => setTimeout(resolve, 150)) // the client's slowness is what is tested
      }
      controller.close()
    }
  })
  const res = await fetch(`${proxy.url}/upload`, { method: 'POST', body, duplex: 'half', headers: { 'x-user-id': 'uploader' } } as RequestInit)
  assert.equal(res.status, 200)
  await res.arrayBuffer()
  assert.equal(proxy.app.traffic.totals('migrated', 60_000).errors, 0)
})

test('latency rule: off by default; with guards.l1.latencyRatio, migrated p99 far above legacy\'s trips', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const slow = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    setTimeout(() => res.end('slow'), 600) // many times legacy's, even on a loaded machine
  })
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '50')
  const start = async (l1: Record<string, unknown>): Promise<Awaited<ReturnType<typeof startProxy>>> => {
    const proxy = await startProxy(t, testConfig(redis.url, legacy.url, slow.url, { rollout: { name: ROLLOUT }, guards: { l1: { ...L1, ...l1 }, l2: { enabled: false } } }))
    await untilRollout(proxy.app, (s) => s.percent === 50)
    return proxy
  }
  const traffic = async (url: string): Promise<void> => {
    for (let batch = 0; batch < 4; batch++) {
      await Promise.all(Array.from({ length: 12 }, async (_, i) => await getAs(url, `u-${batch}-${i}`)))
    }
  }

  const off = await start({})
  await traffic(off.url)
  const [seen] = await nextGuardEvent(off.app, 'evaluated', (e) => e.totals.long.migrated.requests >= 10)
  assert.equal(seen.verdict.trip, false, seen.verdict.reason)
  assert.equal(off.app.sync.current.rolledBack, false)
  await off.close()

  const on = await start({ latencyRatio: 5, latencyMinRequests: 10 })
  const tripped = untilRollout(on.app, (s) => s.rolledBack, 15_000)
  await traffic(on.url)
  const snapshot = await tripped
  assert.match(snapshot.trip?.reason ?? '', /migrated p99 \d+ ms against legacy p99 \d+ ms/)
})
