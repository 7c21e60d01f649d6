import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { Dispatcher } from 'undici'
import type { Logger, LevelWithSilent } from 'pino'
import { BadRequestError, FeaturePausedError, OverloadedError, UpstreamBusyError, UriTooLongError, WritesFencedError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'
import type { Decision, Router, Version } from '../routing/decide.ts'
import { normalisePath as routePath } from '../routing/path.ts'
import type { ReadYourWrites } from '../routing/read-your-writes.ts'
import { classOf, DEFAULT_ROUTE, type RequestClass, type Route, type RouteTable } from '../routing/routes.ts'
import { fromByteString, headerCount, type UserKeyReader } from '../routing/user-key.ts'
import type { RolloutSnapshot } from '../rollout/snapshot.ts'
import type { TrafficWindow } from '../traffic/window.ts'
import type { Pools, UpstreamPool } from './pools.ts'
import { classifyUpstreamError, type UpstreamFailure } from './upstream-errors.ts'
import { VERSION_HEADER, clientHeaders, upstreamHeaders, type HeaderPolicy } from './headers.ts'
import { WaitingList, type Waiting } from './in-flight.ts'
import { normalisePath, otherTarget } from './target.ts'

export { VERSION_HEADER } from './headers.ts'

/** Methods that may be sent again when the first attempt failed before the upstream saw it (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'])

/** Watches one sampled exchange (the L3 shadow comparison); it may never change or delay the answer. */
export interface ResponseTap {
  onResponse: (status: number, headers: IncomingHttpHeaders) => void
  onData: (chunk: Buffer) => void
  onEnd: () => void
  onError: () => void
}

export interface ForwardHooks {
  /** Seconds to put in Retry-After when this path is paused (L2), or 0 to let it through. */
  pausedFor?: (url: string) => number
  /** A tap for this exchange when it is sampled for shadow comparison. */
  tap?: (req: IncomingMessage, decision: Decision, route: Route, cls: RequestClass) => ResponseTap | undefined
  /** Seconds to put in Retry-After when this request is a write the fence holds (the way back), or 0. */
  fenced?: (cls: RequestClass, route: Route, key: string | undefined) => number
}

/** What the forwarder and the WebSocket handshake (upgrade.ts) both route and send by. */
export interface RoutingDeps {
  router: Router
  keyReader: UserKeyReader
  rollout: () => RolloutSnapshot
  pools: Pools
  metrics: Metrics
  traffic: TrafficWindow
  log: Logger
  /** Level of the one line per proxied request; 'silent' keeps the hot path free of it. */
  requestLogLevel: LevelWithSilent
  retries: number
  maxUrlBytes: number
  /** How request headers are rewritten (Host, X-Forwarded-*, trusted proxies). */
  headers: HeaderPolicy
  /** The `routes` of the config; none: every request is on the default route. */
  routes?: RouteTable
  /** Read your writes for the split cohort; none: off. */
  readYourWrites?: ReadYourWrites
  /** The clock of the read-your-writes window (ms since the epoch). */
  now?: () => number
}

/**
 * The version of a request on its route and class: read your writes applies to the reads of a user who just
 * wrote; counted in dbshift_route_requests_total. Allocates nothing.
 */
export function decideRequest (deps: RoutingDeps, req: IncomingMessage, key: string | undefined, route: Route, cls: RequestClass, nowMs: number): Decision {
  const ryw = deps.readYourWrites
  const recentWrite = ryw !== undefined && cls === 'read' && key !== undefined && ryw.recent(key, req.headers.cookie, nowMs)
  const decision = deps.router.decide(deps.rollout(), key, cls, route, recentWrite)
  deps.metrics.recordRoute(route.index, decision.version, cls)
  return decision
}

export interface ForwarderDeps extends RoutingDeps {
  maxInFlight: number
  /** A request still waiting for its answer after this long counts as a failure of its version (the guards). */
  stuckMs: number
  /** A request that found no free upstream connection for this long is answered 503. */
  queueTimeoutMs: number
  /** A client that reads nothing of a paused answer for this long is cut off, and the upstream released. */
  writeTimeoutMs: number
  hooks?: ForwardHooks
  /** True while the server drains before exiting: each answer then closes its connection. */
  draining?: () => boolean
}

/** Methods `OPTIONS *` names: every method is forwarded. */
const ALLOW = 'GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS'

/** Requests pipelined on one connection that wait their turn; more than this and the connection is refused. */
const MAX_PIPELINED = 64

/** Per client connection: whether a request of it is with an upstream, and those pipelined behind it. */
const BUSY = Symbol('dbshift.busy')
const QUEUE = Symbol('dbshift.pipelined')
interface ClientSocket {
  [BUSY]?: boolean
  [QUEUE]?: Array<[IncomingMessage, ServerResponse]>
}

/**
 * The catch-all forwarder: choose the version, stream the request to one member of that version's pool, stream
 * the answer back. The request is never sent to the other version; a failed attempt is retried only inside the
 * same pool, only for idempotent requests without a body, and only when nothing reached the upstream (or a
 * keep-alive connection was closed under it). Requests pipelined on one connection go to the upstream one at a
 * time, so that one connection holds at most one upstream connection.
 */
export function createForwarder (deps: ForwarderDeps): (req: IncomingMessage, res: ServerResponse) => void {
  let inFlight = 0
  const logRequests = deps.requestLogLevel !== 'silent'
  const waiting = new WaitingList(Math.min(deps.stuckMs, deps.queueTimeoutMs))
  const metrics = deps.metrics
  const now = deps.now ?? Date.now

  /** An exchange of `socket` ended: let the next request pipelined on it go. */
  function release (socket: ClientSocket): void {
    inFlight--
    socket[BUSY] = false
    const queue = socket[QUEUE]
    if (queue === undefined) return
    let next = queue.shift()
    while (next !== undefined && (next[1].destroyed || next[0].destroyed)) next = queue.shift()
    if (next !== undefined) forward(next[0], next[1])
  }

  function forward (req: IncomingMessage, res: ServerResponse): void {
    if (refusedConnections.has(req.socket)) return // pipelined behind a refused request: the connection is closing
    if (deps.maxInFlight > 0 && inFlight >= deps.maxInFlight) {
      metrics.recordRefused('overloaded')
      return sendError(res, new OverloadedError(), undefined, { 'retry-after': '1' })
    }
    const socket = req.socket as unknown as ClientSocket
    if (socket[BUSY] === true) {
      const queue = socket[QUEUE] ??= []
      if (queue.length < MAX_PIPELINED) {
        queue.push([req, res])
        return
      }
      refusedConnections.add(req.socket)
      metrics.recordRefused('overloaded')
      return sendError(res, new OverloadedError(), undefined, { connection: 'close' })
    }
    const url = req.url ?? '/'
    if (url.length > deps.maxUrlBytes) {
      metrics.recordRefused('uri_too_long')
      return sendError(res, new UriTooLongError(), undefined, { connection: 'close' })
    }
    let path = url
    let authority: string | undefined
    if (url.charCodeAt(0) === 47 /* / */) {
      path = normalisePath(url)
    } else if (url === '*' && req.method === 'OPTIONS') {
      metrics.recordRefused('asterisk')
      res.writeHead(200, { allow: ALLOW, 'content-length': 0 })
      res.end()
      return
    } else {
      const target = otherTarget(url)
      if ('refused' in target) return refuse(req, res, target.refused)
      path = target.path
      authority = target.authority
    }
    const problem = requestProblem(req)
    if (problem !== undefined) return refuse(req, res, problem)
    // Routes match the normalised path of the target as sent (as rewritten, for absolute-form); one that has
    // no single meaning (an encoded slash, a NUL, a climb above the root, ...) is refused.
    const matched = routePath(authority === undefined ? url : path)
    if (typeof matched !== 'string') return refuse(req, res, matched.message)
    const route = deps.routes?.match(req.method, matched) ?? DEFAULT_ROUTE
    const cls = classOf(req.method, route)
    // Everything after this point (the L2 routes, the L3 shadow request, the request log) sees the rewritten target.
    if (path !== url) req.url = path

    const key = deps.keyReader.read(req.headers, req.rawHeaders)
    const decision = decideRequest(deps, req, key, route, cls, now())
    const retryAfter = deps.hooks?.pausedFor?.(matched) ?? 0
    if (retryAfter > 0) {
      metrics.recordRequest(decision.version, 503, 0)
      metrics.recordRefused('paused')
      return sendError(res, new FeaturePausedError(), decision.version, { 'retry-after': String(retryAfter) })
    }
    const fencedFor = deps.hooks?.fenced?.(cls, route, key) ?? 0
    if (fencedFor > 0) {
      metrics.recordRefused('fenced')
      return sendError(res, new WritesFencedError(), decision.version, { 'retry-after': String(fencedFor) })
    }
    inFlight++
    socket[BUSY] = true
    const exchange = new Exchange(req, res, deps, decision, deps.pools[decision.version], deps.hooks?.tap?.(req, decision, route, cls), waiting, release)
    exchange.user = key
    // A write of the split cohort: its reads go to legacy for the window, here (the marker) and elsewhere (the cookie).
    const ryw = deps.readYourWrites
    if (ryw !== undefined && key !== undefined && decision.why === 'write_dial') exchange.setCookie = ryw.wrote(key, now())
    if (logRequests) exchange.logKey = key
    exchange.send(path, authority)
  }

  function refuse (req: IncomingMessage, res: ServerResponse, problem: string): void {
    refusedConnections.add(req.socket)
    metrics.recordRefused('bad_request')
    sendError(res, new BadRequestError(problem), undefined, { connection: 'close' })
  }

  return forward
}

/** Connections that sent a request we refused as malformed: nothing pipelined behind it is forwarded. */
const refusedConnections = new WeakSet<object>()

/** Why a request must not be forwarded at all, or undefined. Node accepts two Host headers; we do not. */
function requestProblem (req: IncomingMessage): string | undefined {
  return headerCount(req.rawHeaders, 'host') > 1 ? 'more than one Host header' : undefined
}

/** Statuses whose answers have no body (RFC 9110 §6.4.1): a Content-Length on them is legal and means nothing. */
function bodiless (status: number, method: string | undefined): boolean {
  return status === 204 || status === 304 || method === 'HEAD'
}

/** The upstream's Set-Cookie headers plus one of dbshift's. */
function appendCookie (upstream: OutgoingHttpHeaders[string], cookie: string): string[] {
  if (upstream === undefined) return [cookie]
  return [...(Array.isArray(upstream) ? upstream : [String(upstream)]), cookie]
}

/** The client took no bytes for writeTimeoutMs: release the upstream and drop the client. */
function clientStalled (exchange: Exchange): void {
  exchange.stalled()
}

/** Writes a held status line and headers once the exchange knows nothing else arrives in the same read. */
function flushHead (exchange: Exchange): void {
  exchange.flushHead()
}

/** One request's trip to the upstream, as an undici dispatch handler (no intermediate streams). */
class Exchange implements Dispatcher.DispatchHandler, Waiting {
  logKey: string | undefined
  /** The user key (undefined: anonymous), for the distinct users among failures. */
  user: string | undefined
  /** A `Set-Cookie` value to add to the answer (read your writes). */
  setCookie: string | undefined
  prevWaiting: Waiting | undefined
  nextWaiting: Waiting | undefined
  readonly sentAt = performance.now()
  readonly #req: IncomingMessage
  readonly #res: ServerResponse
  readonly #deps: ForwarderDeps
  readonly #decision: Decision
  readonly #pool: UpstreamPool
  readonly #tap: ResponseTap | undefined
  readonly #waiting: WaitingList
  readonly #hasBody: boolean
  #path = '/'
  #authority: string | undefined
  #controller: Dispatcher.DispatchController | undefined
  #attempt = 0
  #status = 0
  #finished = false
  /** Counted as a failure while it waited (stuck or queued too long): not counted again when it ends. */
  #counted = false
  /** Answered by dbshift while still queued: whatever undici does later is ignored. */
  #abandoned = false
  #clientStalled = false
  #headers: OutgoingHttpHeaders | undefined
  /** performance.now() when the client's body had all arrived (a slow upload is not a stuck upstream). */
  #bodyDoneAt = 0
  #stallTimer: NodeJS.Timeout | undefined
  #stallArmed = false
  /** performance.now() when the client's socket last pushed back (0: it is reading). */
  #pausedAt = 0

  constructor (req: IncomingMessage, res: ServerResponse, deps: ForwarderDeps, decision: Decision, pool: UpstreamPool, tap: ResponseTap | undefined, waiting: WaitingList, release: (socket: ClientSocket) => void) {
    this.#req = req
    this.#res = res
    this.#deps = deps
    this.#decision = decision
    this.#pool = pool
    this.#tap = tap
    this.#waiting = waiting
    this.#hasBody = req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined
    if (this.#hasBody && !req.complete) req.once('end', () => { this.#bodyDoneAt = performance.now() })
    const socket = req.socket as unknown as ClientSocket
    res.once('close', () => {
      // The client went away before the answer was complete: stop the upstream side too.
      if (!this.#finished) this.#controller?.abort(new Error('client closed the connection'))
      this.#waiting.remove(this)
      if (this.#stallTimer !== undefined) clearTimeout(this.#stallTimer)
      release(socket)
    })
  }

  send (path: string, authority: string | undefined): void {
    this.#path = path
    this.#authority = authority
    this.#waiting.add(this)
    this.#dispatch()
  }

  #dispatch (): void {
    this.#attempt++
    this.#pool.dispatcher.dispatch({
      path: this.#pool.basePath + this.#path,
      method: this.#req.method as Dispatcher.HttpMethod,
      headers: upstreamHeaders(this.#req, this.#decision.version, this.#deps.headers, this.#authority),
      body: this.#hasBody ? this.#req : null,
      idempotent: false
    }, this)
  }

  /** The waiting list's sweep: count a stuck request as a failure, answer one queued too long. */
  overdue (waitedMs: number): boolean {
    if (this.#finished) return false
    const deps = this.#deps
    const uploading = this.#hasBody && !this.#req.complete
    if (!this.#counted && !uploading && waitedMs >= deps.stuckMs && (this.#bodyDoneAt === 0 || performance.now() - this.#bodyDoneAt >= deps.stuckMs)) {
      this.#counted = true
      deps.traffic.record(this.#decision.version, true, this.#failingUser())
    }
    if (this.#controller === undefined && waitedMs >= deps.queueTimeoutMs) {
      this.#queueTimedOut()
      return false
    }
    return !this.#counted || this.#controller === undefined
  }

  #queueTimedOut (): void {
    const version = this.#decision.version
    this.#abandoned = true
    this.#finished = true
    this.#deps.metrics.upstreamErrors.labels(version, 'timeout').inc()
    this.#deps.log.warn({ version, reason: 'timeout', method: this.#req.method, waitedMs: Math.round(performance.now() - this.sentAt) }, 'no upstream connection became free in time')
    const error = new UpstreamBusyError(version)
    this.#status = error.statusCode
    this.#record(true)
    sendError(this.#res, error, version, { 'retry-after': '1' })
    this.#tap?.onError()
  }

  onRequestStart (controller: Dispatcher.DispatchController): void {
    if (this.#abandoned) return controller.abort(new Error('answered while queued'))
    this.#controller = controller
  }

  onResponseStart (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    if (statusCode < 200) return // 1xx interim answers are not relayed
    this.#waiting.remove(this)
    this.#status = statusCode
    const res = this.#res
    if (res.destroyed) return controller.abort(new Error('client closed the connection'))
    if (this.#deps.draining?.() === true) res.shouldKeepAlive = false
    // Held until the end of this read: an answer that breaks in the same read becomes a 502, not an empty reply.
    this.#headers = clientHeaders(headers, this.#decision.version)
    if (this.setCookie !== undefined) this.#headers['set-cookie'] = appendCookie(this.#headers['set-cookie'], this.setCookie)
    process.nextTick(flushHead, this)
    this.#tap?.onResponse(statusCode, headers)
  }

  flushHead (): void {
    const headers = this.#headers
    if (headers === undefined) return
    this.#headers = undefined
    if (!this.#res.destroyed && !this.#res.headersSent) this.#res.writeHead(this.#status, headers)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.flushHead()
    this.#tap?.onData(chunk)
    if (!this.#res.write(chunk)) {
      controller.pause()
      this.#pausedAt = performance.now()
      this.#res.once('drain', () => {
        this.#pausedAt = 0
        controller.resume()
      })
      // One timer for the exchange, armed at the first pause: it re-arms itself while the client keeps pausing.
      if (this.#stallTimer === undefined) this.#stallTimer = setTimeout(clientStalled, this.#deps.writeTimeoutMs, this)
      else if (!this.#stallArmed) this.#stallTimer.refresh()
      this.#stallArmed = true
    }
  }

  stalled (): void {
    this.#stallArmed = false
    if (this.#finished || this.#pausedAt === 0) return // it read again since
    const pausedFor = performance.now() - this.#pausedAt
    if (pausedFor < this.#deps.writeTimeoutMs) {
      this.#stallTimer?.refresh() // paused again since: judge that pause in full
      this.#stallArmed = true
      return
    }
    this.#clientStalled = true
    this.#deps.log.debug({ version: this.#decision.version, url: this.#req.url }, 'the client read nothing for server.writeTimeoutMs; the answer is cut')
    this.#controller?.abort(new Error('the client stopped reading'))
  }

  onResponseEnd (): void {
    if (this.#abandoned) return
    this.#finished = true
    this.flushHead()
    this.#res.end()
    this.#tap?.onEnd()
    this.#record(this.#status >= 500)
  }

  onResponseError (_controller: Dispatcher.DispatchController, err: Error & { code?: string }): void {
    if (this.#abandoned) return
    const version = this.#decision.version
    const res = this.#res
    if (res.destroyed || this.#clientStalled) { // the client left (or stopped reading) first: not the upstream's fault
      this.#finished = true
      this.#waiting.remove(this)
      if (!res.destroyed) res.destroy()
      if (this.#status !== 0) this.#record(false) // counted under the status it was given, as no error
      return
    }
    // undici wants the bytes a Content-Length names even where the status has no body: the answer is complete.
    if (err.code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' && this.#status !== 0 && bodiless(this.#status, this.#req.method)) {
      return this.onResponseEnd()
    }
    const failure = classifyUpstreamError(err, version)
    const nothingSent = !res.headersSent
    if (nothingSent && this.#headers === undefined && this.#retryable(failure)) {
      this.#deps.log.debug({ code: err.code, error: err.message, version, attempt: this.#attempt }, 'upstream attempt failed; retrying in the same pool')
      return this.#dispatch()
    }
    this.#finished = true
    this.#waiting.remove(this)
    this.#headers = undefined // a held head is never sent: the client gets the error instead
    this.#tap?.onError()
    if (failure.local) {
      this.#deps.metrics.recordRefused(failure.error.statusCode === 400 ? 'bad_request' : 'local_error')
      this.#deps.log.warn({ code: err.code, error: err.message, version, method: this.#req.method }, 'request not forwarded: refused on this side before anything was sent')
      sendError(res, failure.error, version)
      return
    }
    this.#deps.metrics.upstreamErrors.labels(version, failure.reason).inc()
    this.#deps.log.warn({ code: err.code, error: err.message, version, reason: failure.reason, method: this.#req.method }, 'upstream failed')
    if (nothingSent) this.#status = failure.error.statusCode
    this.#record(true) // before the answer: the request's socket is detached once it ends
    if (!nothingSent) res.destroy(err) // the status line is out: the client must see a broken answer, not a complete one
    else sendError(res, failure.error, version)
  }

  /** Another attempt is safe: idempotent, no body to replay, and the upstream never saw the request (or a keep-alive socket closed under it). */
  #retryable (failure: UpstreamFailure): boolean {
    const retries = this.#pool.retries ?? this.#deps.retries // the pool's own upstream.retries
    if (failure.local || retries === 0 || this.#hasBody || !IDEMPOTENT.has(this.#req.method ?? '')) return false
    // A refused connection reached nobody, and the balancer may pick a dead member twice: allow one try per member.
    if (failure.beforeSend) return this.#attempt <= Math.max(retries, this.#pool.members.length)
    // A pooled keep-alive socket closed as the request went out (a reset before any answer) is retried once;
    // a timeout is not (the upstream may be working on the request), nor a protocol error (it answered, badly).
    return failure.reason === 'reset' && this.#status === 0 && this.#attempt === 1
  }

  /**
   * The key the distinct-users rule counts: the user key, or for an anonymous request the client's address (behind
   * a trusted proxy, the address it forwarded: the last X-Forwarded-For entry). Only computed for failures.
   */
  #failingUser (): string {
    if (this.user !== undefined) return this.user
    const remote = this.#req.socket?.remoteAddress ?? ''
    const forwarded = this.#req.headers['x-forwarded-for']
    if (forwarded === undefined || this.#deps.headers.trusted?.(remote) !== true) return remote
    const list = String(forwarded)
    return list.slice(list.lastIndexOf(',') + 1).trim() || remote
  }

  #record (isError: boolean): void {
    const seconds = (performance.now() - this.sentAt) / 1000
    const version = this.#decision.version
    this.#deps.metrics.recordRequest(version, this.#status, seconds)
    if (!this.#counted) this.#deps.traffic.record(version, isError, isError ? this.#failingUser() : undefined)
    this.#deps.traffic.latency(version, seconds)
    if (this.#deps.requestLogLevel !== 'silent') {
      this.#deps.log[this.#deps.requestLogLevel]({
        version,
        why: this.#decision.why,
        bucket: this.#decision.bucket,
        user: this.logKey === undefined ? undefined : fromByteString(this.logKey),
        method: this.#req.method,
        url: this.#req.url,
        upstream: this.#pool.members.length === 1 ? this.#pool.members[0] : `${version} pool`,
        status: this.#status,
        durationMs: Math.round(seconds * 1e6) / 1e3,
        attempts: this.#attempt
      }, 'request')
    }
  }
}

/** A short JSON error naming the code, the message and, where one was chosen, the version. */
export function sendError (res: ServerResponse, error: Error & { code: string, statusCode?: number }, version: Version | undefined, extra: OutgoingHttpHeaders = {}): void {
  if (res.headersSent || res.destroyed) return
  const body = JSON.stringify({ error: error.code, message: error.message, version })
  const headers: OutgoingHttpHeaders = { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), ...extra }
  if (version !== undefined) headers[VERSION_HEADER] = version
  res.writeHead(error.statusCode ?? 500, headers)
  res.end(body)
}
