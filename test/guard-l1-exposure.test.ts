import assert from 'node:assert/strict'
import { test } from 'node:test'
import { Agent, request } from 'undici'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout, type TestProxy } from './helpers.ts'

/** A rollout name of this file's own: its keys cannot meet any other test's. */
const ROLLOUT = 'guard-exposure'

interface Answer {
  sentAt: number
  at: number
  instance: number
  status: number
  version: string
}

test('break the migrated pool under load: how long users were exposed, with timestamps', async (t) => {
  const redis = await startRedis(t)
  const state = { broken: false }
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    if (state.broken) { // the new database is gone: every request fails
      res.writeHead(500, { 'content-type': 'application/json' })
      res.end('{"error":"database unavailable"}')
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{"servedBy":"migrated"}')
  })
  await redis.client.set(`dbshift:{${ROLLOUT}}:percent`, '50')
  // The default L1 rules (10 s fast window, 20 requests, 50%; evaluated every second), three instances.
  const proxies: TestProxy[] = []
  for (let i = 0; i < 3; i++) {
    proxies.push(await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { instanceId: `edge-${i}`, rollout: { name: ROLLOUT }, guards: { l2: { enabled: false } } })))
  }
  await Promise.all(proxies.map(async (p) => await untilRollout(p.app, (s) => s.percent === 50)))
  const switchedAt = proxies.map(async (p) => { await untilRollout(p.app, (s) => s.rolledBack, 15_000); return performance.now() })

  const agent = new Agent({ connections: 8 })
  t.after(async () => await agent.close())
  const answers: Answer[] = []
  const control = { stop: false, brokenAt: 0 }
  let n = 0
  // Eight users' loops at a time, each request to one of the three instances, as behind a load balancer.
  const worker = async (): Promise<void> => {
    while (!control.stop) {
      const i = n++
      const sentAt = performance.now()
      const instance = i % proxies.length
      const res = await request(`${(proxies[instance] as TestProxy).url}/orders`, { headers: { 'x-user-id': `user-${i % 997}` }, dispatcher: agent })
      await res.body.dump()
      answers.push({ sentAt, at: performance.now(), instance, status: res.statusCode, version: String(res.headers['x-dbshift-version']) })
    }
  }
  const workers = Array.from({ length: 8 }, worker)
  // A moment of healthy traffic, then the migrated database breaks.
  while (answers.length < 300) await new Promise((resolve) => setImmediate(resolve))
  control.brokenAt = performance.now()
  state.broken = true
  const switched = await Promise.all(switchedAt)
  const allSwitched = Math.max(...switched)
  // Keep the load on a little longer to show that nobody reaches migrated any more.
  const until = answers.length + 300
  while (answers.length < until) await new Promise((resolve) => setImmediate(resolve))
  control.stop = true
  await Promise.all(workers)

  const brokenAt = control.brokenAt
  const failed = answers.filter((a) => a.at >= brokenAt && a.status >= 500)
  const lastFailure = Math.max(...failed.map((a) => a.at))
  const after = answers.filter((a) => a.sentAt > allSwitched)
  const trip = await redis.client.hgetall(`dbshift:{${ROLLOUT}}:trip`)
  const ms = (value: number): string => `${Math.round(value - brokenAt)} ms`
  const during = answers.filter((a) => a.at >= brokenAt && a.at <= lastFailure)
  t.diagnostic(`traffic: ${answers.length} answers, about ${Math.round(during.length / ((lastFailure - brokenAt) / 1000))} requests/s while exposed`)
  t.diagnostic('t = 0: the migrated pool starts answering 500')
  t.diagnostic(`t = ${ms(failed[0]?.at ?? brokenAt)}: first user answer with an error`)
  t.diagnostic(`trip: ${trip.level ?? '?'} by ${trip.by ?? '?'} at ${trip.at ?? '?'}: ${trip.reason ?? ''}`)
  switched.forEach((at, i) => t.diagnostic(`t = ${ms(at)}: edge-${i} routes everyone to legacy`))
  t.diagnostic(`t = ${ms(lastFailure)}: last user answer with an error; users exposed for ${ms(lastFailure)}, ${failed.length} failed answers`)

  assert.equal(trip.level, 'L1')
  assert.ok(failed.length >= 20, 'the guard needed its minimum sample before acting')
  assert.ok(after.length > 0)
  for (const answer of after) assert.deepEqual([answer.status, answer.version], [200, 'legacy'], 'a request sent after the switch is served by legacy')
  assert.ok(Math.max(...switched) - Math.min(...switched) <= 1_000, 'every instance followed within 1 s')
})
