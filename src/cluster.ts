import cluster, { type Worker } from 'node:cluster'
import { once } from 'node:events'
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createNetServer, type AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import closeWithGrace from 'close-with-grace'
import type { Logger } from 'pino'
import { AggregatorRegistry, type PrometheusContentType } from 'prom-client'
import { ADMIN_BODY_LIMIT, type App, type AppDeps } from './app.ts'
import { bearerAuth } from './admin/auth.ts'
import { hostCheck } from './admin/hosts.ts'
import { createLogger, routeConsoleTo } from './log.ts'
import { listenFailure, refuseToStart } from './exit.ts'
import { loadConfig, parseHostPort, type Config } from './config.ts'
import { readAccess } from './admin/auth.ts'
import { UnauthorizedError, WorkersUnavailableError } from './errors.ts'

/** The admin address the primary gives each worker (the public admin port belongs to the primary). */
const WORKER_ADMIN_ENV = 'DBSHIFT_WORKER_ADMIN_LISTEN'
/** A worker that dies is started again after this pause, so a crash loop cannot spin the CPU. */
const RESPAWN_DELAY_MS = 1_000
/** How long a refused admin request's connection is still drained before it is closed. */
const LINGER_MS = 5_000

type Main = (overrides?: (config: Config) => void, deps?: Partial<AppDeps>) => Promise<{ app: App }>

/**
 * Runs dbshift in one process, or, with `workers` > 1, as a primary and that many workers sharing the proxy port
 * (node:cluster). Each worker is a whole dbshift with its own Redis connections, rollout snapshot and pools, and
 * counts into the fleet-wide traffic slots in Redis, so the L1 guard of every worker judges the sum. The primary
 * serves the admin port: /metrics adds up the workers' registries (prom-client's AggregatorRegistry); anything else
 * goes to one worker, and a rollback that could not be written to Redis to every worker (it must apply at once).
 */
export async function startWorkersOr (main: Main): Promise<void> {
  if (cluster.isWorker) return await runWorker(main)
  let config: Config | undefined
  try {
    config = loadConfig()
  } catch {} // main() reports it and exits 2
  if (config === undefined || config.workers <= 1) {
    await main()
    return
  }
  await runPrimary(config)
}

async function runWorker (main: Main): Promise<void> {
  const { app } = await main((config) => {
    const admin = process.env[WORKER_ADMIN_ENV]
    if (admin !== undefined) config.adminListen = admin
    config.instanceId = `${config.instanceId ?? hostname()}:${process.pid}`
  }, { adminTrustProxy: '127.0.0.1' }) // the primary relays every admin request, naming the caller
  // Constructing one installs prom-client's answer to the primary's "send me your metrics" messages.
  new AggregatorRegistry() // eslint-disable-line no-new
  AggregatorRegistry.setRegistries([app.registry])
}

interface WorkerSlot {
  worker: Worker | undefined
  adminPort: number
}

async function runPrimary (config: Config): Promise<void> {
  const log = createLogger(config.log.level).child({ role: 'primary' })
  routeConsoleTo(log)
  const aggregator = new AggregatorRegistry<PrometheusContentType>()
  const slots: WorkerSlot[] = []
  let stopping = false

  const fork = (slot: WorkerSlot): Worker => {
    const worker = cluster.fork({ [WORKER_ADMIN_ENV]: `127.0.0.1:${slot.adminPort}` })
    slot.worker = worker
    worker.once('exit', (code, signal) => {
      if (slot.worker === worker) slot.worker = undefined
      if (stopping) return
      log.error({ pid: worker.process.pid, code, signal }, 'a worker died; starting another')
      setTimeout(() => { if (!stopping) fork(slot) }, RESPAWN_DELAY_MS).unref()
    })
    return worker
  }

  const gate: AdminGate = {
    checkHost: hostCheck(parseHostPort(config.adminListen).host, config.admin.allowedHosts),
    authenticate: bearerAuth(config.admin.token, config.admin.tokenName) as unknown as AdminGate['authenticate'],
    canRead: readAccess(config.admin.readToken, config.admin.token)
  }
  // The ports first: one that is taken stops the start before any worker runs (a worker would die of it, not say it).
  await checkFree(config.listen).catch((err: NodeJS.ErrnoException) => refuseToStart(listenFailure(config, err)))
  const admin = createServer((req, res) => { adminRequest(req, res, slots, aggregator, gate, log) })
  const address = parseHostPort(config.adminListen)
  await new Promise<void>((resolve) => {
    admin.once('error', (err: NodeJS.ErrnoException) => refuseToStart(listenFailure(config, err)))
    admin.listen(address.port, address.host, resolve)
  })

  for (let i = 0; i < config.workers; i++) slots.push({ worker: undefined, adminPort: await freeLoopbackPort() })
  try {
    await Promise.all(slots.map(async (slot) => { await ready(fork(slot)) }))
  } catch (err) {
    stopping = true
    for (const { worker } of slots) worker?.process.kill('SIGTERM')
    // A worker that refused to start (exit 2: a taken proxy port, …) has said why in one line already.
    if ((err as { exitCode?: number }).exitCode === 2) process.exit(2)
    log.fatal({ err }, 'a worker could not start; stopping')
    process.exit(1)
  }

  log.info({ workers: config.workers, proxy: config.listen, admin: addressOf(admin.address() as AddressInfo) }, 'dbshift is listening')

  // SIGHUP to the primary reloads every worker (each re-reads the file and the environment itself).
  process.on('SIGHUP', () => { for (const { worker } of slots) worker?.process.kill('SIGHUP') })

  closeWithGrace({ delay: config.server.shutdownGraceMs + 5_000, skip: ['SIGHUP'] }, async ({ signal, err }) => {
    stopping = true
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal }, 'shutting down: draining the workers')
    admin.closeAllConnections()
    admin.close()
    await Promise.all(slots.map(async ({ worker }) => {
      if (worker === undefined || worker.isDead()) return
      const exited = once(worker, 'exit')
      worker.process.kill('SIGTERM')
      await exited
    }))
  })
}

/** Resolves once a worker listens on both its ports; rejects when it exits first. */
async function ready (worker: Worker): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let listening = 0
    const onListening = (): void => {
      if (++listening < 2) return
      worker.off('exit', onExit)
      resolve()
    }
    const onExit = (code: number | null): void => {
      worker.off('listening', onListening)
      reject(Object.assign(new Error(`worker ${String(worker.process.pid)} exited with ${String(code)} before listening`), { exitCode: code }))
    }
    worker.on('listening', onListening)
    worker.once('exit', onExit)
  })
}

/** What the primary checks itself before it relays anything: the same rules as a worker's admin port. */
interface AdminGate {
  checkHost: (host: string | undefined) => void
  authenticate: (request: { headers: IncomingMessage['headers'], ip: string }) => string
  /** Reads, where `admin.readToken` is set (the primary answers /metrics itself). */
  canRead: ((request: IncomingMessage) => boolean) | undefined
}

/**
 * One request to the primary's admin port. A change is checked for its token before a byte of its body is read, and
 * its body is read up to the admin body limit only (both as a worker would), so no caller can make the primary hold
 * more than that. The caller's address goes to the worker in X-Forwarded-For (replacing any the caller sent), which
 * the workers' admin ports believe from the primary alone, so the audit names the caller.
 */
function adminRequest (req: IncomingMessage, res: ServerResponse, slots: WorkerSlot[], aggregator: AggregatorRegistry<PrometheusContentType>, gate: AdminGate, log: Logger): void {
  try {
    gate.checkHost(req.headers.host)
    if (req.method !== 'GET' && req.method !== 'HEAD') gate.authenticate({ headers: req.headers, ip: req.socket.remoteAddress ?? '' })
  } catch (err) {
    return refuse(req, res, err as RelayError)
  }
  const live = slots.filter((slot) => slot.worker !== undefined && !slot.worker.isDead())
  if (req.method === 'GET' && req.url?.split('?')[0] === '/metrics') {
    // The workers check every other read themselves (admin.readToken); this one the primary answers.
    if (gate.canRead !== undefined && !gate.canRead(req)) return sendError(res, new UnauthorizedError())
    aggregator.clusterMetrics().then((text) => {
      res.writeHead(200, { 'content-type': aggregator.contentType })
      res.end(text)
    }, (err: Error) => {
      log.error({ err }, 'collecting the workers\' metrics failed')
      sendError(res, new WorkersUnavailableError(err.message, { cause: err }))
    })
    return
  }
  if (live.length === 0) return sendError(res, new WorkersUnavailableError('none is running'))
  const declared = Number(req.headers['content-length'] ?? 0)
  if (declared > ADMIN_BODY_LIMIT) return refuse(req, res, bodyTooLarge())
  const isRollback = req.method === 'POST' && req.url?.split('?')[0] === '/rollback'
  const isReload = req.method === 'POST' && req.url?.split('?')[0] === '/reload'
  const chunks: Buffer[] = []
  let size = 0
  let refused = false
  req.on('data', (chunk: Buffer) => {
    size += chunk.length
    if (size > ADMIN_BODY_LIMIT) {
      if (!refused) refuse(req, res, bodyTooLarge())
      refused = true
      chunks.length = 0
      return
    }
    chunks.push(chunk)
  })
  req.on('end', () => {
    if (refused) return
    const body = Buffer.concat(chunks)
    const caller = req.socket.remoteAddress ?? ''
    const answer = (async () => {
      // A reload applies to the worker that gets it only: every worker is told, and the answer says how each took it.
      if (isReload) return await reloadAll(req, body, caller, live)
      const [first, ...others] = live as [WorkerSlot, ...WorkerSlot[]]
      const reply = await relay(req, body, caller, first.adminPort)
      // A rollback that reached Redis reaches the other workers through it within milliseconds; one that did not
      // (Redis away) must still apply to every worker at once, so each is told directly.
      if (isRollback && reply.status < 300 && !persisted(reply.body)) {
        await Promise.all(others.map(async (slot) => await relay(req, body, caller, slot.adminPort).catch(() => undefined)))
      }
      return reply
    })()
    answer.then((reply) => {
      res.writeHead(reply.status, reply.headers)
      res.end(reply.body)
    }, (err: Error) => {
      sendError(res, new WorkersUnavailableError(err.message, { cause: err }))
    })
  })
}

type RelayError = Error & { code: string, statusCode?: number }

/**
 * `POST /reload` through the primary: relayed to every worker at once (each re-reads the file and the environment,
 * as on SIGHUP). 200 when every worker applied it; otherwise the status and error of the first worker that did not,
 * with `workers` listing each worker's own answer (`worker` is its pid).
 */
async function reloadAll (req: IncomingMessage, body: Buffer, caller: string, live: WorkerSlot[]): Promise<{ status: number, headers: IncomingMessage['headers'], body: Buffer }> {
  const workers = await Promise.all(live.map(async (slot) => {
    const worker = slot.worker?.process.pid ?? null
    try {
      const reply = await relay(req, body, caller, slot.adminPort)
      let answer: Record<string, unknown>
      try { answer = JSON.parse(reply.body.toString()) as Record<string, unknown> } catch { answer = { error: 'DBSHIFT_ERR_WORKERS_UNAVAILABLE', message: reply.body.toString() } }
      return { worker, status: reply.status, ...answer }
    } catch (err) {
      const error = new WorkersUnavailableError((err as Error).message)
      return { worker, status: error.statusCode, error: error.code, message: error.message }
    }
  }))
  const failed = workers.find((answer) => answer.status !== 200)
  const result = failed === undefined
    ? { reloaded: true, changed: (workers[0] as { changed?: unknown } | undefined)?.changed ?? [], workers }
    : { error: failed.error, message: failed.message, workers }
  const text = JSON.stringify(result)
  return { status: failed?.status ?? 200, headers: { 'content-type': 'application/json; charset=utf-8', 'content-length': String(Buffer.byteLength(text)) }, body: Buffer.from(text) }
}

/** The answer a worker's admin port gives to a body over the limit (413, in the admin API's error shape). */
function bodyTooLarge (): RelayError {
  return Object.assign(new Error('Request body is too large'), { code: 'DBSHIFT_ERR_BAD_REQUEST', statusCode: 413 })
}

/**
 * Answers a refused request at once. What the caller still sends is read and dropped (held nowhere), as Node does
 * for an answered request: closing a socket with unread data resets it, and the reset can destroy the answer before
 * the caller reads it. A caller that keeps sending longer than LINGER_MS is cut off.
 */
function refuse (req: IncomingMessage, res: ServerResponse, error: RelayError): void {
  if (res.headersSent) return
  const text = JSON.stringify({ error: error.code, message: error.message })
  res.writeHead(error.statusCode ?? 400, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) })
  res.end(text)
  req.resume()
  if (req.complete) return
  const timer = setTimeout(() => { req.socket.destroy() }, LINGER_MS).unref()
  req.once('end', () => { clearTimeout(timer) })
}

/** Whether a worker's rollback answer says Redis has it (`"persisted": true`). */
function persisted (body: Buffer): boolean {
  try {
    return (JSON.parse(body.toString()) as { persisted?: unknown }).persisted === true
  } catch {
    return false
  }
}

/** Sends one admin request to a worker's private admin port and reads the whole answer. */
async function relay (req: IncomingMessage, body: Buffer, caller: string, port: number): Promise<{ status: number, headers: IncomingMessage['headers'], body: Buffer }> {
  const headers = { ...req.headers, 'content-length': String(body.length), 'x-forwarded-for': caller }
  delete headers['transfer-encoding']
  delete headers.connection
  return await new Promise((resolve, reject) => {
    const out = request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers, timeout: 10_000 }, (answer) => {
      const chunks: Buffer[] = []
      answer.on('data', (chunk: Buffer) => chunks.push(chunk))
      answer.on('end', () => {
        const { connection: _c, 'transfer-encoding': _t, ...rest } = answer.headers
        resolve({ status: answer.statusCode ?? 502, headers: rest, body: Buffer.concat(chunks) })
      })
      answer.on('error', reject)
    })
    out.on('timeout', () => out.destroy(new Error('the worker did not answer in time')))
    out.on('error', reject)
    out.end(body)
  })
}

function sendError (res: ServerResponse, error: InstanceType<typeof WorkersUnavailableError> | InstanceType<typeof UnauthorizedError>): void {
  const text = JSON.stringify({ error: error.code, message: error.message })
  res.writeHead(error.statusCode ?? 503, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

/** Resolves when `host:port` can be listened on now (the workers then share it); rejects with the listen error. */
async function checkFree (hostPort: string): Promise<void> {
  const { host, port } = parseHostPort(hostPort)
  if (port === 0) return
  const server = createNetServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, resolve)
  })
  await new Promise<void>((resolve) => server.close(() => resolve()))
}

async function freeLoopbackPort (): Promise<number> {
  const server = createNetServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

function addressOf (address: AddressInfo): string {
  return `${address.address}:${address.port}`
}
