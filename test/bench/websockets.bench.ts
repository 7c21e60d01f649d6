// `node --import tsx test/bench/websockets.bench.ts`: what holding open WebSockets costs dbshift. Opens
// WS_CONNECTIONS (5000) WebSockets through one dbshift (built dist/, as `npm start` runs it) to `ws` echo upstreams
// in this process, half of them on each version; reads dbshift's own resident memory and heap from its /metrics
// before and after; sends one message on every socket; then rolls back and times how the migrated half is moved
// (close 1012, spread over server.reconnectSpreadMs). Prints a table and writes it to test/bench/results/.
// WS_CONNECTIONS (5000), WS_SPREAD_MS (5000).
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { WebSocket, WebSocketServer } from 'ws'
import { describeMachine } from './lib/machine.ts'
import { rssOf } from './lib/processes.ts'
import { buildDbshift, startBenchRedis, startDbshift } from './lib/services.ts'
import { fmt, table } from './lib/stats.ts'

const connections = Number(process.env.WS_CONNECTIONS ?? 5_000)
const spreadMs = Number(process.env.WS_SPREAD_MS ?? 5_000)
const BATCH = 250

async function echoUpstream (): Promise<{ url: string, server: Server, wss: WebSocketServer }> {
  const server = createServer((_req, res) => { res.end('ok') })
  const wss = new WebSocketServer({ server })
  wss.on('connection', (socket) => { socket.on('message', (data, isBinary) => { socket.send(data, { binary: isBinary }) }) })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, wss }
}

/** A few numbers from dbshift's /metrics (after asking it nothing else). */
async function scrape (adminUrl: string): Promise<{ rss: number, heap: number, open: number, moved: number }> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  const one = (pattern: RegExp): number => Number(pattern.exec(text)?.[1] ?? NaN)
  const sum = (pattern: RegExp): number => [...text.matchAll(pattern)].reduce((total, m) => total + Number(m[1]), 0)
  return {
    rss: one(/^process_resident_memory_bytes (\d+)/m),
    heap: one(/^nodejs_heap_size_used_bytes (\d+)/m),
    open: sum(/^dbshift_open_connections\{[^}]*kind="websocket"[^}]*\} (\d+)/gm),
    moved: sum(/^dbshift_connections_moved_total\{[^}]*\} (\d+)/gm)
  }
}

/** Versions of the sockets opened, from the 101's x-dbshift-version. */
const versions = new WeakMap<WebSocket, string>()

async function open (url: string, user: string): Promise<WebSocket> {
  const socket = new WebSocket(url.replace(/^http/, 'ws') + '/live', { headers: { 'x-user-id': user } })
  socket.once('upgrade', (res) => { versions.set(socket, String(res.headers['x-dbshift-version'])) })
  await once(socket, 'open')
  return socket
}

async function main (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-ws-bench-'))
  buildDbshift()
  const legacy = await echoUpstream()
  const migrated = await echoUpstream()
  const redis = await startBenchRedis(undefined)
  await redis.client.set('dbshift:{default}:percent', '50')
  const dbshift = await startDbshift(dir, undefined, {
    redisUrl: redis.url,
    legacy: legacy.url,
    migrated: migrated.url,
    extra: `server: { reconnectSpreadMs: ${spreadMs}, maxUpgraded: ${connections + 100} }`
  })
  const sockets: WebSocket[] = []
  try {
    await (await fetch(dbshift.url)).text() // one request, so the pools and the request path are warm
    const before = await scrape(dbshift.adminUrl)
    const rssBefore = rssOf(dbshift.child.pid as number)

    const openStarted = performance.now()
    for (let i = 0; i < connections; i += BATCH) {
      const batch = await Promise.all(Array.from({ length: Math.min(BATCH, connections - i) }, async (_, j) => await open(dbshift.url, `bench-${i + j}`)))
      sockets.push(...batch)
    }
    const openSeconds = (performance.now() - openStarted) / 1000

    const echoStarted = performance.now()
    await Promise.all(sockets.map(async (socket, i) => {
      const answer = once(socket, 'message')
      socket.send(`message ${i}`)
      await answer
    }))
    const echoSeconds = (performance.now() - echoStarted) / 1000
    const after = await scrape(dbshift.adminUrl)
    const rssAfter = rssOf(dbshift.child.pid as number)
    if (after.open !== connections) throw new Error(`dbshift counts ${after.open} open WebSockets, not ${connections}`)

    // The rollback: every migrated socket must close with 1012 within the spread; the legacy ones stay.
    const onMigrated = sockets.filter((socket) => versions.get(socket) === 'migrated')
    const closes: number[] = []
    const codes = new Map<number, number>()
    const rolledBackAt = performance.now()
    const allMoved = Promise.all(onMigrated.map(async (socket) => await new Promise<void>((resolve) => {
      socket.once('close', (code) => {
        closes.push(performance.now() - rolledBackAt)
        codes.set(code, (codes.get(code) ?? 0) + 1)
        resolve()
      })
    })))
    await redis.client.set('dbshift:{default}:state', 'rolled_back')
    let timer: NodeJS.Timeout | undefined
    await Promise.race([allMoved, new Promise((resolve) => { timer = setTimeout(resolve, spreadMs + 10_000) })])
    clearTimeout(timer)
    const stillOpen = sockets.filter((socket) => socket.readyState === WebSocket.OPEN)
    const legacyEcho = await Promise.all(stillOpen.slice(0, 100).map(async (socket) => {
      const answer = once(socket, 'message')
      socket.send('after')
      return String((await answer)[0])
    }))
    closes.sort((a, b) => a - b)

    const machine = describeMachine()
    const perSocket = (rssAfter - rssBefore) / connections
    const rows = [
      ['WebSockets open through dbshift', fmt.int(connections)],
      ['opened in (batches of 250)', `${openSeconds.toFixed(1)} s`],
      ['one echo on every socket', `${echoSeconds.toFixed(2)} s`],
      ['dbshift RSS before / after', `${fmt.mib(rssBefore)} / ${fmt.mib(rssAfter)}`],
      ['RSS per open WebSocket', `${(perSocket / 1024).toFixed(1)} KiB`],
      ['dbshift JS heap before / after', `${fmt.mib(before.heap)} / ${fmt.mib(after.heap)}`],
      ['heap per open WebSocket', `${((after.heap - before.heap) / connections / 1024).toFixed(1)} KiB`],
      [`moved on rollback (spread ${spreadMs} ms)`, `${fmt.int(closes.length)} of ${fmt.int(onMigrated.length)} migrated closed (${[...codes].map(([code, n]) => `${n} × ${code}`).join(', ')}), first ${fmt.int(closes[0] ?? NaN)} ms, last ${fmt.int(closes.at(-1) ?? NaN)} ms after the SET`],
      ['still open after the rollback (legacy users)', `${fmt.int(stillOpen.length)}; ${legacyEcho.filter((m) => m === 'after').length} of ${legacyEcho.length} sampled still echo`]
    ]
    const report = [
      '# WebSockets held open through dbshift',
      '',
      table(['what', 'measured'], rows),
      '',
      'Method: one dbshift (dist/main.js, one process, log level warn) between this process\'s `ws` clients and two `ws` echo upstreams (also in this process), Redis of its own; 50% rollout, so half the sockets are on each version. RSS from /proc of the dbshift process; heap from its `nodejs_heap_size_used_bytes` (not forced to collect garbage). Move times run from the Redis SET, so they include the poll that sees it.',
      '',
      table(['machine', ''], Object.entries(machine))
    ].join('\n')
    process.stdout.write(`\n${report}\n`)
    mkdirSync('test/bench/results', { recursive: true })
    const stamp = new Date().toISOString().replace(/[:]/g, '').replace(/\..*/, '')
    writeFileSync(`test/bench/results/websockets-${stamp}.md`, report + '\n')
    process.stdout.write(`\nwritten to test/bench/results/websockets-${stamp}.md\n`)
  } finally {
    for (const socket of sockets) socket.terminate()
    await dbshift.stop()
    redis.client.disconnect()
    await redis.server.stop()
    for (const upstream of [legacy, migrated]) {
      upstream.wss.close()
      upstream.server.closeAllConnections()
      upstream.server.close()
    }
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
