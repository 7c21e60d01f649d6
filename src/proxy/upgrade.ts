import { request as httpRequest, ServerResponse, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { BadRequestError, FeaturePausedError, ShuttingDownError, TooManyUpgradedError, UriTooLongError } from '../errors.ts'
import type { RefusedReason } from '../metrics.ts'
import type { Decision, Version } from '../routing/decide.ts'
import { normalisePath as routePath } from '../routing/path.ts'
import { classOf, DEFAULT_ROUTE, type RequestClass, type Route } from '../routing/routes.ts'
import { fromByteString, headerCount } from '../routing/user-key.ts'
import type { OpenConnections } from './connections.ts'
import { decideRequest, sendError, type RoutingDeps } from './forward.ts'
import { clientHeaders, upstreamHeaders } from './headers.ts'
import type { UpstreamPool } from './pools.ts'
import { normalisePath, otherTarget } from './target.ts'
import { Tunnel } from './tunnel.ts'
import { classifyUpstreamError } from './upstream-errors.ts'

/** TCP keep-alive probes on upgraded sockets, so that a peer that vanished without a FIN is found and closed. */
const KEEPALIVE_MS = 60_000
/** What a client may send before the upstream has accepted its handshake. */
const MAX_EARLY_BYTES = 65_536

export interface UpgradeDeps extends RoutingDeps {
  connections: OpenConnections
  /** Open WebSockets (and handshakes under way) before a new handshake gets 503; 0 = no limit. */
  maxUpgraded: number
  connectTimeoutMs: number
  headersTimeoutMs: number
  /** Seconds for Retry-After when this path is paused (L2), or 0. */
  pausedFor?: (url: string) => number
  draining: () => boolean
  /** Serves a request that asked to upgrade to something other than WebSocket as a plain HTTP/1.1 request. */
  plain: (req: IncomingMessage, res: ServerResponse) => void
}

/**
 * The proxy server's `upgrade` listener. A WebSocket handshake is routed like any request (same user key, same
 * decision), sent to one member of the chosen pool on a connection of its own, and, once that member answers 101,
 * the two sockets are joined (see tunnel.ts). Any other answer reaches the client as it is. Another protocol
 * (`h2c`, …) is not upgraded: the request is served as plain HTTP/1.1, which RFC 9110 §7.8 allows.
 */
export function createUpgradeHandler (deps: UpgradeDeps): (req: IncomingMessage, socket: Duplex, head: Buffer) => void {
  let pending = 0
  const turns: Record<Version, number> = { legacy: 0, migrated: 0 }

  return function upgrade (req, duplex, head) {
    const socket = duplex as Socket
    socket.on('error', () => { socket.destroy() })
    // Answered here, never by an upstream, and never counted against a version (dbshift_refused_total).
    const refuseAs = (reason: RefusedReason, error: RefusalError, version?: Version, extra?: OutgoingHttpHeaders): void => {
      deps.metrics.recordRefused(reason)
      refuse(req, socket, error, version, extra)
    }
    if (!isWebSocket(req)) {
      // Node stops parsing at an upgrade, so a body would be left unread on the socket: only bodiless ones are served.
      if (hasBody(req)) return refuseAs('bad_request', new BadRequestError(`an Upgrade to "${String(req.headers.upgrade)}" with a request body is not supported; send the request without Upgrade`))
      return deps.plain(req, responseOn(req, socket))
    }
    const url = req.url ?? '/'
    if (url.length > deps.maxUrlBytes) return refuseAs('uri_too_long', new UriTooLongError())
    // The same target rules as for any request (target.ts): origin-form normalised, absolute-form rewritten.
    let path = url
    let authority: string | undefined
    if (url.charCodeAt(0) === 47 /* / */) {
      path = normalisePath(url)
    } else {
      const target = otherTarget(url)
      if ('refused' in target) return refuseAs('bad_request', new BadRequestError(target.refused))
      path = target.path
      authority = target.authority
    }
    if (headerCount(req.rawHeaders, 'host') > 1) return refuseAs('bad_request', new BadRequestError('more than one Host header'))
    if (deps.draining()) return refuseAs('shutting_down', new ShuttingDownError(), undefined, { 'retry-after': '1' })
    if (deps.maxUpgraded > 0 && deps.connections.count('websocket') + pending >= deps.maxUpgraded) {
      return refuseAs('overloaded', new TooManyUpgradedError(deps.maxUpgraded), undefined, { 'retry-after': '1' })
    }
    // The same route rules as for any request (forward.ts): the normalised path of the target as sent picks the
    // route; one that has no single meaning is refused.
    const matched = routePath(authority === undefined ? url : path)
    if (typeof matched !== 'string') return refuseAs('bad_request', new BadRequestError(matched.message))
    const route = deps.routes?.match(req.method, matched) ?? DEFAULT_ROUTE
    const cls = classOf(req.method, route)
    const key = deps.keyReader.read(req.headers, req.rawHeaders)
    const decision = decideRequest(deps, req, key, route, cls, (deps.now ?? Date.now)())
    const retryAfter = deps.pausedFor?.(matched) ?? 0
    if (retryAfter > 0) {
      deps.metrics.recordRequest(decision.version, 503, 0)
      return refuseAs('paused', new FeaturePausedError(), decision.version, { 'retry-after': String(retryAfter) })
    }
    pending++
    const headers = { ...upstreamHeaders(req, decision.version, deps.headers, authority), connection: 'Upgrade', upgrade: req.headers.upgrade as string }
    new Handshake(req, socket, head, key, decision, deps, deps.pools[decision.version], turns, { path, headers, route, cls }, () => { pending-- }).send()
  }
}

/** What is sent upstream, and the route and class the socket was decided on (it is decided again on them). */
interface HandshakeRequest {
  path: string
  headers: Record<string, string | string[]>
  route: Route
  cls: RequestClass
}

/** One handshake's trip to the upstream, and on success the tunnel it becomes. */
class Handshake {
  readonly #req: IncomingMessage
  readonly #socket: Socket
  readonly #head: Buffer
  readonly #key: string | undefined
  readonly #decision: Decision
  readonly #deps: UpgradeDeps
  readonly #pool: UpstreamPool
  readonly #turns: Record<Version, number>
  readonly #settled: () => void
  readonly #request: HandshakeRequest
  readonly #started = performance.now()
  #attempt = 0
  readonly #early: Buffer[] = []
  #earlyBytes = 0
  #out: ClientRequest | undefined
  #timer: NodeJS.Timeout | undefined
  /** The client left, or the handshake has its outcome: nothing more is done or counted. */
  #over = false

  constructor (req: IncomingMessage, socket: Socket, head: Buffer, key: string | undefined, decision: Decision, deps: UpgradeDeps, pool: UpstreamPool, turns: Record<Version, number>, request: HandshakeRequest, settled: () => void) {
    this.#req = req
    this.#socket = socket
    this.#head = head
    this.#key = key
    this.#decision = decision
    this.#deps = deps
    this.#pool = pool
    this.#turns = turns
    this.#settled = settled
    this.#request = request
    socket.once('close', this.#onClientGone)
    socket.once('end', this.#onClientEnd)
    // Read while waiting, or a client that leaves would never be noticed (its end is only seen by reading).
    socket.on('data', this.#onEarlyData)
  }

  send (): void {
    this.#attempt++
    const version = this.#decision.version
    const members = this.#pool.members
    const member = new URL(members[this.#turns[version]++ % members.length] as string)
    const secure = member.protocol === 'https:'
    const out = (secure ? httpsRequest : httpRequest)({
      hostname: member.hostname.replace(/^\[(.*)\]$/, '$1'),
      port: member.port === '' ? (secure ? 443 : 80) : Number(member.port),
      method: 'GET',
      path: this.#pool.basePath + this.#request.path,
      headers: this.#request.headers,
      agent: false // an upgraded connection leaves any pool: it gets one of its own
    })
    this.#out = out
    out.once('socket', (upstream: Socket) => {
      if (!upstream.connecting) return this.#waitForAnswer()
      this.#arm(this.#deps.connectTimeoutMs, 'UND_ERR_CONNECT_TIMEOUT', 'connecting to the upstream timed out')
      upstream.once('connect', () => { this.#waitForAnswer() })
    })
    out.once('upgrade', (res, upstream, upstreamHead) => { this.#onUpgrade(res, upstream, upstreamHead) })
    out.once('response', (res) => { this.#onRefused(res) })
    out.on('error', (err) => { this.#onError(err) })
    out.end()
  }

  #waitForAnswer (): void {
    this.#arm(this.#deps.headersTimeoutMs, 'UND_ERR_HEADERS_TIMEOUT', 'the upstream did not answer the handshake in time')
  }

  /** Fails the attempt with `code` (as undici names its timeouts, so the one error table classifies it) after `ms`. */
  #arm (ms: number, code: string, message: string): void {
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => { this.#out?.destroy(Object.assign(new Error(message), { code })) }, ms)
    this.#timer.unref()
  }

  /** The upstream accepted: tell the client, then join the sockets. */
  #onUpgrade (res: IncomingMessage, upstream: Socket, upstreamHead: Buffer): void {
    if (this.#finish()) {
      upstream.destroy()
      return
    }
    // The upstream socket keeps its request object; that must not keep this handshake (and the client's request) alive.
    this.#out?.removeAllListeners()
    this.#out?.on('error', () => {})
    const client = this.#socket
    const { version } = this.#decision
    client.write(switchingProtocols(res, version), 'latin1')
    for (const socket of [client, upstream]) {
      socket.setNoDelay(true)
      socket.setKeepAlive(true, KEEPALIVE_MS)
      socket.setTimeout(0)
    }
    // Bytes that came with the handshake on either side are the first frames of their direction.
    if (upstreamHead.length > 0) upstream.unshift(upstreamHead)
    const early = this.#early.length === 0 ? this.#head : Buffer.concat([this.#head, ...this.#early])
    if (early.length > 0) client.unshift(early)
    const tunnel = new Tunnel(client, upstream)
    const { route, cls } = this.#request
    const remove = this.#deps.connections.add({ version, kind: 'websocket', key: this.#key, route, cls, close: async (code) => await tunnel.close(code) })
    tunnel.closed.then(remove, remove)
    this.#record(101, false)
  }

  /** The upstream answered something other than 101: relay it as it is, and close the connection. */
  #onRefused (res: IncomingMessage): void {
    if (this.#finish()) {
      res.destroy()
      return
    }
    const status = res.statusCode ?? 502
    const answer = responseOn(this.#req, this.#socket)
    answer.writeHead(status, clientHeaders(res.headers, this.#decision.version))
    res.pipe(answer)
    res.once('error', () => { this.#socket.destroy() })
    this.#record(status, status >= 500)
  }

  #onError (err: Error & { code?: string }): void {
    if (this.#over) return
    clearTimeout(this.#timer)
    const version = this.#decision.version
    const failure = classifyUpstreamError(err, version)
    // A connection that was never made reached nobody: another member may have it, as for any request.
    if (failure.beforeSend && this.#deps.retries > 0 && this.#attempt <= Math.max(this.#deps.retries, this.#pool.members.length)) {
      this.#deps.log.debug({ err, version, attempt: this.#attempt }, 'WebSocket handshake failed before reaching the upstream; retrying in the same pool')
      return this.send()
    }
    this.#finish()
    if (failure.local) { // this side's failure before anything was sent: says nothing about the upstream
      this.#deps.metrics.recordRefused(failure.error.statusCode === 400 ? 'bad_request' : 'local_error')
      this.#deps.log.warn({ err, version }, 'WebSocket handshake not forwarded: refused on this side before anything was sent')
      return refuse(this.#req, this.#socket, failure.error, version)
    }
    this.#deps.metrics.upstreamErrors.labels(version, failure.reason).inc()
    this.#deps.log.warn({ err, version, reason: failure.reason, url: this.#req.url }, 'upstream failed a WebSocket handshake')
    refuse(this.#req, this.#socket, failure.error, version)
    this.#record(failure.error.statusCode, true)
  }

  /** Marks the handshake settled; true when the client already left and there is nothing to answer. */
  #finish (): boolean {
    clearTimeout(this.#timer)
    const gone = this.#over
    if (!gone) {
      this.#over = true
      this.#settled()
      this.#socket.off('close', this.#onClientGone)
      this.#socket.off('end', this.#onClientEnd)
      this.#socket.off('data', this.#onEarlyData)
    }
    return gone
  }

  /** Bytes a client sent before the 101 (it should send none): kept for the upstream, within a bound. */
  readonly #onEarlyData = (chunk: Buffer): void => {
    this.#early.push(chunk)
    this.#earlyBytes += chunk.length
    if (this.#earlyBytes > MAX_EARLY_BYTES) this.#socket.destroy()
  }

  /** The server keeps half-open sockets; a client that stops sending before its answer has left. */
  readonly #onClientEnd = (): void => {
    this.#socket.destroy()
  }

  readonly #onClientGone = (): void => {
    if (this.#over) return
    this.#finish()
    this.#out?.destroy()
  }

  #record (status: number, isError: boolean): void {
    const seconds = (performance.now() - this.#started) / 1000
    const { version, why, bucket } = this.#decision
    this.#deps.metrics.recordRequest(version, status, seconds)
    // The distinct-users rule counts the user key, or the client address of an anonymous client.
    this.#deps.traffic.record(version, isError, isError ? this.#key ?? this.#socket.remoteAddress ?? '' : undefined)
    this.#deps.traffic.latency(version, seconds)
    const level = this.#deps.requestLogLevel
    if (level === 'silent') return
    this.#deps.log[level]({
      version,
      why,
      bucket,
      user: this.#key === undefined ? undefined : fromByteString(this.#key),
      method: 'GET',
      url: this.#req.url,
      upgrade: 'websocket',
      status,
      durationMs: Math.round(seconds * 1e6) / 1e3,
      attempts: this.#attempt
    }, 'request')
  }
}

/** A WebSocket opening handshake (RFC 6455 §4.1): a GET whose Upgrade names websocket. */
function isWebSocket (req: IncomingMessage): boolean {
  if (req.method !== 'GET') return false
  const upgrade = req.headers.upgrade
  return upgrade !== undefined && upgrade.split(',').some((token) => token.trim().toLowerCase() === 'websocket')
}

function hasBody (req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return length !== undefined ? length !== '0' : req.headers['transfer-encoding'] !== undefined
}

/** The upstream's 101, with its end-to-end headers, the version tag, and the Upgrade and Connection it agreed to. */
function switchingProtocols (res: IncomingMessage, version: Version): string {
  const headers: OutgoingHttpHeaders = clientHeaders(res.headers, version)
  let head = `HTTP/1.1 101 ${res.statusMessage ?? 'Switching Protocols'}\r\nUpgrade: ${String(res.headers.upgrade ?? 'websocket')}\r\nConnection: Upgrade\r\n`
  for (const name in headers) {
    const value = headers[name]
    if (value === undefined) continue
    for (const one of Array.isArray(value) ? value : [value]) head += `${name}: ${String(one)}\r\n`
  }
  return `${head}\r\n`
}

/** An HTTP answer written straight onto the upgraded socket; the connection closes after it. */
function responseOn (req: IncomingMessage, socket: Socket): ServerResponse {
  const res = new ServerResponse(req)
  res.shouldKeepAlive = false
  res.assignSocket(socket)
  res.once('finish', () => {
    socket.end()
    socket.once('finish', () => socket.destroy())
  })
  return res
}

type RefusalError = Error & { code: string, statusCode?: number }

function refuse (req: IncomingMessage, socket: Socket, error: RefusalError, version?: Version, extra: OutgoingHttpHeaders = {}): void {
  sendError(responseOn(req, socket), error, version, { connection: 'close', ...extra })
}
