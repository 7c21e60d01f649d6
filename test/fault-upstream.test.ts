import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { Socket } from 'node:net'
import { Agent, request } from 'undici'
import { startProxy, startRedis, startUpstream, testConfig, type TestUpstream } from './helpers.ts'

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** Sends GETs from many users, `concurrency` at a time, until stopped; tallies statuses and who served them. */
function traffic (url: string, concurrency = 4): { stop: () => Promise<{ sent: number, statuses: Map<number, number>, servedBy: Map<string, number> }> } {
  const agent = new Agent({ connections: concurrency })
  const statuses = new Map<number, number>()
  const servedBy = new Map<string, number>()
  let sent = 0
  const state = { stopped: false }
  const loops = Array.from({ length: concurrency }, async () => {
    while (!state.stopped) {
      const user = `user-${sent++ % 500}`
      try {
        const res = await request(`${url}/items`, { dispatcher: agent, headers: { 'x-user-id': user } })
        const body = await res.body.json() as { servedBy?: string }
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
        if (body.servedBy !== undefined) servedBy.set(body.servedBy, (servedBy.get(body.servedBy) ?? 0) + 1)
      } catch {
        statuses.set(0, (statuses.get(0) ?? 0) + 1)
      }
    }
  })
  return {
    stop: async () => {
      state.stopped = true
      await Promise.all(loops)
      await agent.close()
      return { sent, statuses, servedBy }
    }
  }
}

function report (fault: string, figures: { sent: number, statuses: Map<number, number> }): void {
  process.stdout.write(`# fault "${fault}": sent ${figures.sent}, answers ${JSON.stringify(Object.fromEntries(figures.statuses))}\n`)
}

test('a pool member dies under traffic: its share moves to the other members of the same pool, no request fails', async (t) => {
  const redis = await startRedis(t)
  const members: TestUpstream[] = [await startUpstream(t, 'legacy-a'), await startUpstream(t, 'legacy-b'), await startUpstream(t, 'legacy-c')]
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, members.map((m) => m.url), migrated.url))

  const load = traffic(proxy.url)
  await sleep(500)
  await members[1]?.close() // connections cut and the port closed: in-flight requests reset, new ones refused
  await sleep(1_500)
  const figures = await load.stop()
  report('one of three legacy members killed', figures)
  assert.deepEqual(Object.fromEntries(figures.statuses), { 200: figures.sent })
  assert.ok((figures.servedBy.get('legacy-a') ?? 0) > 0 && (figures.servedBy.get('legacy-c') ?? 0) > 0)
  assert.equal(figures.servedBy.get('migrated'), undefined, 'never the other version')
  assert.equal(migrated.requests.length, 0)
})

test('every member of a pool down: 502 naming that version for its users, the other version unaffected', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migratedA = await startUpstream(t, 'migrated-a')
  const migratedB = await startUpstream(t, 'migrated-b')
  await redis.client.set('dbshift:{default}:percent', '50')
  // L1 off: here the pool's own failure answer is under test, not the rollback that would follow it.
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, [migratedA.url, migratedB.url], { rollout: { initialPercent: 50 }, guards: { l1: { enabled: false } } }))

  await migratedA.close()
  await migratedB.close()
  const load = traffic(proxy.url)
  await sleep(1_000)
  const figures = await load.stop()
  report('every migrated member down', figures)
  assert.deepEqual([...figures.statuses.keys()].sort(), [200, 502])
  assert.deepEqual([...figures.servedBy.keys()], ['legacy'], 'the migrated users are answered 502, never served by legacy')

  const migratedUser = Array.from({ length: 100 }, (_, i) => `user-${i}`).find((user) => proxy.app.router.decide(proxy.app.sync.current, user).version === 'migrated')
  const res = await request(`${proxy.url}/x`, { headers: { 'x-user-id': migratedUser ?? '' } })
  assert.equal(res.statusCode, 502)
  assert.equal(res.headers['x-dbshift-version'], 'migrated')
  assert.deepEqual(await res.body.json(), { error: 'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE', message: 'the migrated pool could not answer', version: 'migrated' })
})

test('a member that accepts and never answers: 504 after upstream.headersTimeoutMs, other requests keep flowing', async (t) => {
  const redis = await startRedis(t)
  const hung: Socket[] = []
  const legacy = await startUpstream(t, 'legacy', (req) => { hung.push(req.socket) }) // never answers
  t.after(() => { for (const socket of hung) socket.destroy() })
  const migrated = await startUpstream(t, 'migrated')
  await redis.client.sadd('dbshift:{default}:allow', 'mia')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { upstream: { headersTimeoutMs: 500 } }))

  const stuck = Array.from({ length: 20 }, async () => await request(`${proxy.url}/slow`, { headers: { 'x-user-id': 'bob' } }))
  // While twenty requests wait on the silent legacy member, migrated users are served at once.
  for (let i = 0; i < 20; i++) {
    const res = await request(`${proxy.url}/fast`, { headers: { 'x-user-id': 'mia' } })
    await res.body.dump()
    assert.equal(res.statusCode, 200)
  }
  for (const res of await Promise.all(stuck)) {
    assert.equal(res.statusCode, 504)
    assert.equal((await res.body.json() as { error: string }).error, 'DBSHIFT_ERR_UPSTREAM_TIMEOUT')
  }
})

test('slow bodies stream through; a body that stalls past upstream.bodyTimeoutMs is cut, not completed', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 10 })
    let sent = 0
    const gap = req.url === '/stall' ? 1_000 : 100 // /stall pauses longer than the body timeout
    const timer = setInterval(() => {
      res.write('x')
      if (++sent === 10) { clearInterval(timer); res.end() }
    }, gap)
    res.once('close', () => clearInterval(timer))
  })
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { upstream: { bodyTimeoutMs: 400 } }))

  const slow = await request(`${proxy.url}/trickle`)
  assert.equal(slow.statusCode, 200)
  assert.equal(await slow.body.text(), 'xxxxxxxxxx', 'a byte every 100 ms is slow but alive: delivered whole')

  const stalled = await request(`${proxy.url}/stall`)
  assert.equal(stalled.statusCode, 200, 'the status line was already out')
  await assert.rejects(stalled.body.text(), 'the client sees a broken answer, never a short one passed off as complete')
  assert.equal(legacy.requests.filter((req) => req.url === '/stall').length, 1, 'a started answer is never retried')
})

test('keep-alive race: a pooled socket closed as a request is sent — idempotent requests retried once in the pool, others 502, never sent twice', async (t) => {
  const redis = await startRedis(t)
  // Each upstream connection answers its first request, then drops the connection on the second one, having
  // read it: exactly what a keep-alive timeout on the upstream's side looks like when it crosses a new request.
  const served = new WeakMap<Socket, number>()
  const arrivals: string[] = []
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    const count = (served.get(req.socket) ?? 0) + 1
    served.set(req.socket, count)
    arrivals.push(`${req.method ?? ''} ${req.url ?? ''}${count > 1 ? ' (dropped)' : ''}`)
    if (count > 1) return req.socket.destroy()
    req.resume()
    req.once('end', () => res.end(JSON.stringify({ servedBy: 'legacy' })))
  })
  const migrated = await startUpstream(t, 'migrated')
  // One connection, so that every second request lands on a socket the upstream is about to drop.
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { upstream: { connections: 1 } }))

  const send = async (method: string, path: string, body?: string): Promise<number> => {
    const res = await request(`${proxy.url}${path}`, { method: method as 'GET', body, headers: body === undefined ? {} : { 'content-type': 'text/plain' } })
    await res.body.dump()
    return res.statusCode
  }
  assert.equal(await send('GET', '/prime-1'), 200)
  assert.equal(await send('GET', '/get'), 200, 'GET: retried once on a fresh connection')
  assert.equal(await send('DELETE', '/delete'), 200, 'DELETE (idempotent, no body): retried once')
  assert.equal(await send('POST', '/post', 'order=1'), 502, 'POST: not idempotent, answered 502')
  assert.equal(await send('GET', '/prime-2'), 200)
  assert.equal(await send('PUT', '/put', 'v=2'), 502, 'PUT with a body: the body cannot be replayed')
  assert.deepEqual(arrivals, [
    'GET /prime-1',
    'GET /get (dropped)', 'GET /get',
    'DELETE /delete (dropped)', 'DELETE /delete',
    'POST /post (dropped)',
    'GET /prime-2',
    'PUT /put (dropped)'
  ])
  assert.equal(migrated.requests.length, 0)
})
