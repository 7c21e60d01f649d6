import assert from 'node:assert/strict'
import { once } from 'node:events'
import { get, type IncomingMessage, type ServerResponse } from 'node:http'
import { test, type TestContext } from 'node:test'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'
import { usersInBuckets } from './websocket-helpers.ts'

/** An upstream that holds every answer open: an event stream on /events, a chunked download elsewhere. */
async function streamingUpstream (t: TestContext, name: string) {
  const open = new Map<string, ServerResponse>()
  const upstream = await startUpstream(t, name, (req, res) => {
    const user = String(req.headers['x-user-id'])
    const sse = req.url?.endsWith('/events') === true
    res.writeHead(200, { 'content-type': sse ? 'text/event-stream' : 'application/octet-stream', 'cache-control': 'no-store' })
    res.write(sse ? `data: hello from ${name}\n\n` : 'part 1;')
    open.set(`${req.url ?? ''} ${user}`, res)
  })
  return { ...upstream, open }
}

interface Reader { res: IncomingMessage, next: () => Promise<string>, ended: Promise<{ complete: boolean }> }

/** GET through dbshift as `user`; `next()` resolves with the next chunk of the body as it arrives. */
async function open (url: string, user: string, path: string, accept?: string): Promise<Reader> {
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    get(url + path, { headers: { 'x-user-id': user, ...(accept === undefined ? {} : { accept }) } }, resolve).once('error', reject)
  })
  res.setEncoding('utf8')
  const chunks: string[] = []
  const waiting: Array<(chunk: string) => void> = []
  res.on('data', (chunk: string) => {
    const next = waiting.shift()
    if (next === undefined) chunks.push(chunk)
    else next(chunk)
  })
  const ended = new Promise<{ complete: boolean }>((resolve) => {
    res.once('end', () => resolve({ complete: res.complete }))
    res.once('error', () => resolve({ complete: false }))
  })
  return { res, next: async () => await new Promise((resolve) => { const c = chunks.shift(); if (c !== undefined) resolve(c); else waiting.push(resolve) }), ended }
}

test('an event stream is relayed as it arrives, tracked, and ended cleanly when a rollback moves its user; other streams stay', async (t) => {
  const redis = await startRedis(t)
  const legacy = await streamingUpstream(t, 'legacy')
  const migrated = await streamingUpstream(t, 'migrated')
  await redis.client.set('dbshift:{default}:percent', '50')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { server: { reconnectSpreadMs: 200 } }))
  const [movingUser] = usersInBuckets(0, 5000, 1)
  const [legacyUser] = usersInBuckets(5000, 10000, 1)

  const added = once(proxy.app.connections, 'added')
  const moving = await open(proxy.url, movingUser as string, '/events', 'text/event-stream')
  assert.equal(moving.res.headers['x-dbshift-version'], 'migrated')
  assert.equal(await moving.next(), 'data: hello from migrated\n\n', 'the first event arrives while the answer is still open')
  const [tracked] = await added
  assert.deepEqual({ kind: tracked.kind, version: tracked.version }, { kind: 'stream', version: 'migrated' })
  const staying = await open(proxy.url, legacyUser as string, '/events', 'text/event-stream')
  assert.equal(await staying.next(), 'data: hello from legacy\n\n')
  const download = await open(proxy.url, movingUser as string, '/download')
  assert.equal(await download.next(), 'part 1;')
  assert.equal(proxy.app.connections.count('stream'), 2, 'the download is not an event stream')
  let metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_open_connections\{version="migrated",kind="stream"\} 1/)

  await redis.client.set('dbshift:{default}:state', 'rolled_back')
  assert.deepEqual(await moving.ended, { complete: true }, 'ended cleanly: EventSource reconnects')

  legacy.open.get(`/events ${legacyUser}`)?.write('data: still here\n\n')
  assert.equal(await staying.next(), 'data: still here\n\n', 'a stream whose version did not change is not touched')
  migrated.open.get(`/download ${movingUser}`)?.write('part 2;')
  assert.equal(await download.next(), 'part 2;', 'a download is never cut short: it would look complete')

  const again = await open(proxy.url, movingUser as string, '/events', 'text/event-stream')
  assert.equal(again.res.headers['x-dbshift-version'], 'legacy')
  assert.equal(await again.next(), 'data: hello from legacy\n\n')

  metrics = await (await fetch(`${proxy.adminUrl}/metrics`)).text()
  assert.match(metrics, /dbshift_connections_moved_total\{version="migrated"\} 1/)
  assert.match(metrics, /dbshift_open_connections\{version="migrated",kind="stream"\} 0/)
  assert.match(metrics, /dbshift_upstream_errors_total\{version="migrated",reason="other"\} 0/)
  assert.doesNotMatch(metrics, /dbshift_upstream_errors_total\{version="migrated",reason="[a-z]+"\} [1-9]/, 'a move is no upstream error')
  assert.equal(proxy.app.traffic.totals('migrated', 60_000).errors, 0)
  for (const res of [...legacy.open.values(), ...migrated.open.values()]) res.end()
})

test('an event stream is decided again on its own route: a lowered percentage leaves a route with its own dial alone, a lowered route dial moves it', async (t) => {
  const redis = await startRedis(t)
  const legacy = await streamingUpstream(t, 'legacy')
  const migrated = await streamingUpstream(t, 'migrated')
  await redis.client.set('dbshift:{default}:percent', '50')
  await redis.client.set('dbshift:{default}:route:live:percent', '50')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, {
    server: { reconnectSpreadMs: 0 },
    routes: [{ name: 'live', path: '/live/**', mode: 'split' }]
  }))
  await untilRollout(proxy.app, (snapshot) => snapshot.routePercent?.get('live') === 50)
  const [user] = usersInBuckets(1000, 5000, 1) as [string]
  const onRoute = await open(proxy.url, user, '/live/events', 'text/event-stream')
  const onDefault = await open(proxy.url, user, '/events', 'text/event-stream')
  assert.deepEqual([onRoute.res.headers['x-dbshift-version'], onDefault.res.headers['x-dbshift-version']], ['migrated', 'migrated'])
  assert.equal(await onRoute.next(), 'data: hello from migrated\n\n')
  assert.equal(await onDefault.next(), 'data: hello from migrated\n\n')

  // 10%: the default route now sends this user to legacy; the route's own dial (50%) still sends them to migrated.
  await redis.client.set('dbshift:{default}:percent', '10')
  assert.deepEqual(await onDefault.ended, { complete: true })
  migrated.open.get(`/live/events ${user}`)?.write('data: still here\n\n')
  assert.equal(await onRoute.next(), 'data: still here\n\n', 'the stream on the route is not moved')

  await redis.client.set('dbshift:{default}:route:live:percent', '10')
  assert.deepEqual(await onRoute.ended, { complete: true }, 'the lowered route dial moves it')
  const again = await open(proxy.url, user, '/live/events', 'text/event-stream')
  assert.equal(again.res.headers['x-dbshift-version'], 'legacy')
})
