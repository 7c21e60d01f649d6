import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { TestContext } from 'node:test'
import { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { buildApp, type App } from '../src/app.ts'
import { resolveConfig, type Config } from '../src/config.ts'
import { createLogger } from '../src/log.ts'
import type { GuardEvents } from '../src/guards/index.ts'
import type { RolloutSnapshot } from '../src/rollout/snapshot.ts'

type Teardown = Pick<TestContext, 'after'>

/** A directory of the test's own under the temp directory, removed with everything in it on teardown. */
export function tempDir (t: Teardown, prefix = 'dbshift-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

/**
 * A free TCP port on loopback, drawn at random below the kernel's ephemeral range (32768+). Ports handed out
 * by bind(0) come from that range, so a port released here (a Redis a test stops and restarts, an address
 * meant to refuse connections) is never given to another test's server in the meantime.
 */
export async function freePort (): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const port = 10_000 + Math.floor(Math.random() * 22_000)
    const server = createNetServer()
    const bound = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false))
      server.listen(port, '127.0.0.1', () => resolve(true))
    })
    if (bound) {
      await new Promise<void>((resolve) => server.close(() => resolve()))
      return port
    }
    if (attempt > 50) throw new Error('no free port found between 10000 and 32000')
  }
}

export interface TestRedis {
  url: string
  port: number
  /** A client of the test's own; closed on teardown. */
  client: Redis
  /** Stops the server (SHUTDOWN NOSAVE) and waits for the process to exit. */
  stop: () => Promise<void>
  /** Starts it again on the same port, empty. */
  start: () => Promise<void>
}

const NO_REDIS = 'redis-server could not be started. Install Redis (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`) ' +
  'so that it is on PATH, or run `bash .ci/run`, which installs it.'

/** Starts a redis-server of the test's own on a free port, so that it can be stopped, paused and flushed freely. */
export async function startRedis (t: Teardown, args: string[] = []): Promise<TestRedis> {
  const port = await freePort()
  let child: ChildProcess | undefined
  // A directory of its own, so that no stray dump.rdb is loaded and none is left behind (a replica writes one on sync).
  const dir = mkdtempSync(join(tmpdir(), `dbshift-redis-${port}-`))
  const start = async (): Promise<void> => {
    const dump = ['--dir', dir, '--dbfilename', 'dump.rdb']
    child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...dump, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    const proc = child
    await new Promise<void>((resolve, reject) => {
      let out = ''
      proc.once('error', (err: NodeJS.ErrnoException) => reject(new Error(err.code === 'ENOENT' ? NO_REDIS : `${NO_REDIS} (${err.message})`)))
      proc.once('exit', (code) => reject(new Error(`redis-server exited with ${String(code)}: ${out}`)))
      proc.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) resolve()
      })
    })
    proc.removeAllListeners('exit')
    proc.stdout?.resume()
  }
  const stop = async (): Promise<void> => {
    const proc = child
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = once(proc, 'exit')
    proc.kill('SIGKILL')
    await exited
  }
  await start().catch((err: unknown) => {
    rmSync(dir, { recursive: true, force: true })
    throw err
  })
  const client = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1, lazyConnect: true, retryStrategy: () => 100 })
  client.on('error', () => {})
  await client.connect()
  t.after(async () => {
    client.disconnect()
    await stop()
    rmSync(dir, { recursive: true, force: true })
  })
  return { url: `redis://127.0.0.1:${port}`, port, client, stop, start }
}

export interface TestUpstream {
  url: string
  server: Server
  /** Requests received so far. */
  requests: IncomingMessage[]
  close: () => Promise<void>
}

export type Handler = (req: IncomingMessage, res: ServerResponse) => void

/** An upstream that answers JSON naming itself (or runs `handler`), on a free port; closed on teardown. */
export async function startUpstream (t: Teardown, name: string, handler?: Handler): Promise<TestUpstream> {
  const requests: IncomingMessage[] = []
  const server = createServer((req, res) => {
    requests.push(req)
    if (handler !== undefined) return handler(req, res)
    req.resume()
    req.once('end', () => {
      const body = JSON.stringify({ servedBy: name, tag: req.headers['x-dbshift-version'], user: req.headers['x-user-id'], path: req.url })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const close = async (): Promise<void> => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  t.after(close)
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, requests, close }
}

/** A logger set up as dbshift's own (the same serializers), whose JSON lines the test can read back. */
export function captureLogs (level = 'debug'): { log: Logger, lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
      callback()
    }
  })
  return { log: createLogger(level, sink), lines }
}

export interface TestProxy {
  app: App
  url: string
  adminUrl: string
  logs: Array<Record<string, unknown>>
  close: () => Promise<void>
}

/** The config every test proxy starts from: loopback ports 0, fast Redis polling. */
export function testConfig (redisUrl: string, legacy: string | string[], migrated: string | string[], file: Record<string, unknown> = {}): Config {
  const section = (name: string): Record<string, unknown> => (file[name] ?? {}) as Record<string, unknown>
  return resolveConfig({
    ...file,
    listen: '127.0.0.1:0',
    adminListen: '127.0.0.1:0',
    pools: { legacy: [legacy].flat(), migrated: [migrated].flat() },
    redis: { url: redisUrl, pollIntervalMs: 100, fullSyncIntervalMs: 500, commandTimeoutMs: 500, ...section('redis') }
  })
}

/** A whole dbshift (proxy and admin ports) on loopback; closed on teardown. */
export async function startProxy (t: Teardown, config: Config): Promise<TestProxy> {
  const { log, lines } = captureLogs()
  const app = await buildApp(config, { log })
  const { proxy, admin } = await app.listen()
  t.after(async () => await app.close())
  return { app, url: `http://127.0.0.1:${proxy.port}`, adminUrl: `http://127.0.0.1:${admin.port}`, logs: lines, close: async () => await app.close() }
}

/** Resolves once the instance's rollout snapshot satisfies `predicate` (now, or on a later change). */
export async function untilRollout (app: App, predicate: (snapshot: RolloutSnapshot) => boolean, timeoutMs = 5_000): Promise<RolloutSnapshot> {
  if (predicate(app.sync.current)) return app.sync.current
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      app.sync.off('change', onChange)
      reject(new Error(`rollout never matched within ${timeoutMs} ms; last: ${JSON.stringify({ percent: app.sync.current.percent, state: app.sync.current.state })}`))
    }, timeoutMs)
    const onChange = (next: RolloutSnapshot): void => {
      if (!predicate(next)) return
      clearTimeout(timer)
      app.sync.off('change', onChange)
      resolve(next)
    }
    app.sync.on('change', onChange)
  })
}

/** GET through the proxy as a user; returns status, the version header and the JSON body. */
export async function getAs (url: string, user: string | undefined, path = '/'): Promise<{ status: number, version: string | null, body: Record<string, unknown> }> {
  const res = await fetch(url + path, { headers: user === undefined ? {} : { 'x-user-id': user } })
  const text = await res.text()
  let body: Record<string, unknown> = {}
  try { body = JSON.parse(text) as Record<string, unknown> } catch { body = { text } }
  return { status: res.status, version: res.headers.get('x-dbshift-version'), body }
}

export interface ProxyProcess {
  url: string
  adminUrl: string
  pid: number
  child: ChildProcess
  /** Log lines the process printed (JSON). */
  logs: Array<Record<string, unknown>>
  /** Every line the process printed, on stdout and stderr, as printed. */
  output: string[]
  /** Sends a signal and resolves with the exit code. */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>
}

/** dbshift as its own process (`src/main.ts`), configured by environment variables; killed on teardown. */
export async function startProxyProcess (t: Teardown, env: NodeJS.ProcessEnv): Promise<ProxyProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { PATH: process.env.PATH, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml', DBSHIFT_LISTEN: '127.0.0.1:0', DBSHIFT_ADMIN_LISTEN: '127.0.0.1:0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const logs: Array<Record<string, unknown>> = []
  const output: string[] = []
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  const listening = new Promise<Record<string, unknown>>((resolve, reject) => {
    let buffered = ''
    let errors = ''
    let errorLine = ''
    child.stderr.on('data', (chunk: Buffer) => {
      errors += chunk.toString()
      errorLine += chunk.toString()
      const lines = errorLine.split('\n')
      errorLine = lines.pop() ?? ''
      output.push(...lines)
    })
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      let newline = buffered.indexOf('\n')
      while (newline !== -1) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        newline = buffered.indexOf('\n')
        output.push(line)
        try {
          const entry = JSON.parse(line) as Record<string, unknown>
          logs.push(entry)
          if (entry.msg === 'dbshift is listening') resolve(entry)
        } catch {}
      }
    })
    exited.then((code) => reject(new Error(`dbshift exited with ${String(code)} before listening: ${errors}`)), reject)
  })
  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal)
    return await exited
  }
  t.after(async () => { await stop('SIGKILL') })
  const ready = await listening
  const port = (address: unknown): string => String(address).slice(String(address).lastIndexOf(':') + 1)
  return { url: `http://127.0.0.1:${port(ready.proxy)}`, adminUrl: `http://127.0.0.1:${port(ready.admin)}`, pid: child.pid as number, child, logs, output, stop }
}

/** The peak resident set size of a process so far (VmHWM), in bytes. Linux only. */
export function peakRss (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const match = /VmHWM:\s+(\d+) kB/.exec(status)
  if (match === null) throw new Error(`no VmHWM for process ${pid}`)
  return Number(match[1]) * 1024
}

/** The next event `name` from an instance's guards that satisfies `predicate` (rejects after `timeoutMs`). */
export async function nextGuardEvent<K extends keyof GuardEvents> (app: App, name: K, predicate: (...args: GuardEvents[K]) => boolean = () => true, timeoutMs = 5_000): Promise<GuardEvents[K]> {
  const events = app.guards.events
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { events.off(name, listener as never); reject(new Error(`no matching "${name}" event within ${timeoutMs} ms`)) }, timeoutMs)
    const listener = (...args: GuardEvents[K]): void => {
      if (!predicate(...args)) return
      clearTimeout(timer)
      events.off(name, listener as never)
      resolve(args)
    }
    events.on(name, listener as never)
  })
}

/** Starts a process of the test's own and waits until its output matches `ready`; killed on teardown. */
export async function startProcess (t: Teardown, command: string, args: string[], ready: RegExp): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
  })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`${command} exited with ${String(code)}: ${out}`)))
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (ready.test(out)) resolve()
    })
  })
  child.removeAllListeners('exit')
  child.stdout?.resume()
  return child
}
