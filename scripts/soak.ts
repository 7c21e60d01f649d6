// `npm run soak`: the reliability soak. dbshift (its own process) carries continuous traffic for SOAK_SECONDS (600)
// with a new X-User-ID on every request, while a fault is injected every SOAK_FAULT_SECONDS (30): Redis killed and
// restarted, Redis paused, the dial moved by hand, a legacy pool member killed and brought back. Every request is
// counted (sent, answered 2xx, answered otherwise, lost) and dbshift's RSS and heap are sampled, so that a leak or
// a failed request shows. Exits 1 when a request failed or was lost, or when the heap grew by more than a quarter
// from the first half of the run to the second. Traffic goes to 127.0.0.1 only, and everything stops by itself.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'

const TOTAL = Number(process.env.SOAK_SECONDS ?? 600)
const FAULT_EVERY = Number(process.env.SOAK_FAULT_SECONDS ?? 30)
const CONNECTIONS = Number(process.env.SOAK_CONNECTIONS ?? 32)
const ROOT = new URL('..', import.meta.url).pathname

async function freePort (): Promise<number> {
  const server = createNetServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))

/** An upstream member that answers a small JSON body; it can be killed and brought back on its port. */
class Member {
  server: Server | undefined
  constructor (readonly name: string, readonly port: number) {}
  async start (): Promise<void> {
    const server = createServer((req, res) => {
      req.resume()
      req.once('end', () => {
        const body = `{"servedBy":"${this.name}"}`
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length })
        res.end(body)
      })
    })
    server.keepAliveTimeout = 10_000
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', resolve))
    this.server = server
  }

  async kill (): Promise<void> {
    const server = this.server
    this.server = undefined
    if (server === undefined) return
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** A redis-server that keeps its data across a kill (append-only file synced on every write). */
class RedisServer {
  child: ChildProcess | undefined
  constructor (readonly port: number, readonly dir: string) {}
  async start (): Promise<void> {
    const child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', this.dir], { stdio: ['ignore', 'pipe', 'inherit'] })
    this.child = child
    let out = ''
    await new Promise<void>((resolve, reject) => {
      child.once('exit', (code) => reject(new Error(`redis-server exited with ${String(code)}: ${out}`)))
      child.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) resolve()
      })
    })
    child.removeAllListeners('exit')
    child.stdout?.resume()
  }

  async kill (): Promise<void> {
    const child = this.child
    this.child = undefined
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  }
}

function rssOf (pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return Number(match?.[1] ?? 0) * 1024
}

async function heapUsed (adminUrl: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  return Number(/^nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1] ?? Number.NaN)
}

const mib = (bytes: number): string => `${(bytes / 1_048_576).toFixed(1)} MiB`

async function main (): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-soak-'))
  const redis = new RedisServer(await freePort(), dir)
  const legacy = [new Member('legacy-a', await freePort()), new Member('legacy-b', await freePort())]
  const migrated = [new Member('migrated-a', await freePort())]
  let dbshift: ChildProcess | undefined
  const control = new Redis({ port: redis.port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => 100, maxRetriesPerRequest: 1 })
  control.on('error', () => {})
  try {
    await redis.start()
    for (const member of [...legacy, ...migrated]) await member.start()
    await control.connect()
    await control.set('dbshift:{default}:percent', '20')

    const port = await freePort()
    const adminPort = await freePort()
    const file = join(dir, 'dbshift.yaml')
    writeFileSync(file, 'log: { level: warn }\nredis: { pollIntervalMs: 500 }\n')
    dbshift = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/main.ts')], {
      env: {
        ...process.env,
        DBSHIFT_CONFIG: file,
        DBSHIFT_LISTEN: `127.0.0.1:${port}`,
        DBSHIFT_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
        DBSHIFT_LEGACY: legacy.map((m) => `http://127.0.0.1:${m.port}`).join(','),
        DBSHIFT_MIGRATED: migrated.map((m) => `http://127.0.0.1:${m.port}`).join(','),
        REDIS_URL: `redis://127.0.0.1:${redis.port}`
      },
      stdio: ['ignore', 'inherit', 'inherit']
    })
    const adminUrl = `http://127.0.0.1:${adminPort}`
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${adminUrl}/readyz`)).ok) break
      } catch {}
      if (i > 200) throw new Error('dbshift did not start')
      await sleep(100)
    }
    const pid = dbshift.pid as number

    // One fault per interval, in turn; each undoes itself within a few seconds.
    const faults: Array<[string, () => Promise<void>]> = [
      ['Redis killed for 3 s, then restarted', async () => { await redis.kill(); await sleep(3_000); await redis.start() }],
      ['Redis paused 2 s (CLIENT PAUSE)', async () => { await control.client('PAUSE', 2_000, 'ALL') }],
      ['dial moved by hand 20 → 30 → 20', async () => { await control.set('dbshift:{default}:percent', '30'); await sleep(3_000); await control.set('dbshift:{default}:percent', '20') }],
      ['legacy member killed for 3 s', async () => { await legacy[1]?.kill(); await sleep(3_000); await legacy[1]?.start() }],
      ['garbage in the dial for 3 s', async () => { await control.set('dbshift:{default}:percent', 'abc'); await sleep(3_000); await control.set('dbshift:{default}:percent', '20') }]
    ]
    const injected: string[] = []

    let user = 0
    const rows: string[] = []
    const totals = { sent: 0, ok: 0, other: 0, errors: 0, timeouts: 0, lost: 0, cut: 0 }
    const heaps: number[] = []
    let peakRss = 0
    for (let elapsed = 0, round = 0; elapsed < TOTAL; elapsed += FAULT_EVERY, round++) {
      const seconds = Math.min(FAULT_EVERY, TOTAL - elapsed)
      const fault = round === 0 ? undefined : faults[(round - 1) % faults.length]
      const running = autocannon({
        url: `http://127.0.0.1:${port}`,
        connections: CONNECTIONS,
        duration: seconds,
        requests: [{ path: '/api/orders', setupRequest: (req) => ({ ...req, headers: { ...req.headers, 'x-user-id': `soak-${user++}` } }) }]
      })
      const injecting = fault === undefined ? Promise.resolve() : sleep(seconds * 300).then(fault[1])
      const [result] = await Promise.all([running, injecting])
      if (fault !== undefined) injected.push(fault[0])
      const sent = result.requests.sent
      const ok = result['2xx']
      totals.sent += sent
      totals.ok += ok
      totals.other += result.non2xx
      totals.errors += result.errors
      totals.timeouts += result.timeouts
      // The load generator stops at its deadline with one request in flight per connection: those are cut by it,
      // not lost by dbshift. Anything missing beyond that is lost.
      const unanswered = sent - ok - result.non2xx - result.errors - result.timeouts
      totals.cut += Math.min(unanswered, CONNECTIONS)
      totals.lost += Math.max(unanswered - CONNECTIONS, 0)
      const rss = rssOf(pid)
      peakRss = Math.max(peakRss, rss)
      const heap = await heapUsed(adminUrl)
      if (round > 0) heaps.push(heap)
      rows.push([`${elapsed + seconds} s`, fault?.[0] ?? 'warm-up', sent, ok, result.non2xx, result.errors + result.timeouts, Math.round(result.requests.average), mib(rss), mib(heap)].join(' | '))
      process.stderr.write(`${rows.at(-1) ?? ''}\n`)
    }
    // The heap saws up and down with garbage collection: compare the highest sample of each half of the run.
    const half = Math.ceil(heaps.length / 2)
    const firstHalf = Math.max(...heaps.slice(0, half))
    const secondHalf = Math.max(...heaps.slice(half))
    process.stdout.write([
      '',
      '| elapsed | fault during the interval | sent | 2xx | other status | errors | req/s | RSS | heap used |',
      '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
      ...rows.map((row) => `| ${row} |`),
      '',
      `distinct users: ${user}; sent ${totals.sent}, 2xx ${totals.ok}, other status ${totals.other}, errors ${totals.errors}, timeouts ${totals.timeouts}, lost ${totals.lost} ` +
        `(and ${totals.cut} cut by the load generator at the end of each interval, one per connection)`,
      `highest heap used in the first half ${mib(firstHalf)}, in the second half ${mib(secondHalf)}; peak RSS ${mib(peakRss)}`,
      ''
    ].join('\n'))
    const failed = totals.other + totals.errors + totals.timeouts + totals.lost
    const grew = secondHalf > firstHalf * 1.25
    if (grew) process.stdout.write('the heap grew by more than a quarter from the first half of the run to the second\n')
    return failed === 0 && !grew ? 0 : 1
  } finally {
    control.disconnect()
    if (dbshift !== undefined && dbshift.exitCode === null) {
      const exited = once(dbshift, 'exit')
      dbshift.kill('SIGTERM')
      await exited
    }
    for (const member of [...legacy, ...migrated]) await member.kill()
    await redis.kill()
    rmSync(dir, { recursive: true, force: true })
  }
}

process.exitCode = await main()
