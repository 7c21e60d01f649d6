import { createServer, type Server } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { Server as TlsServer } from 'node:tls'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { loadConfig, parseHostPort, type Config } from './config.ts'
import { BadRequestError } from './errors.ts'
import { hostCheck } from './admin/hosts.ts'
import { Metrics } from './metrics.ts'
import { redactUrl } from './redact.ts'
import { routerFor } from './routing/configured.ts'
import { UserKeyReader } from './routing/user-key.ts'
import { RolloutKeys } from './rollout/keys.ts'
import { connectRedis, type RedisClient } from './rollout/redis.ts'
import { redisHealth, type RedisHealth, type RedisState } from './rollout/redis-health.ts'
import { RolloutStore } from './rollout/store.ts'
import { RolloutSync } from './rollout/sync.ts'
import type { RolloutSnapshot } from './rollout/snapshot.ts'
import { ReverseLag } from './rollout/way-back.ts'
import { TrafficWindow } from './traffic/window.ts'
import { createPools, closePools, type Pools } from './proxy/pools.ts'
import { createForwarder, sendError, type ForwarderDeps } from './proxy/forward.ts'
import type { AdminOptions } from './admin/options.ts'
import { OpenConnections } from './proxy/connections.ts'
import { StreamTracker } from './proxy/streams.ts'
import { createUpgradeHandler } from './proxy/upgrade.ts'
import { CLOSE_GOING_AWAY } from './proxy/ws-frames.ts'
import { headerPolicy } from './proxy/headers.ts'
import { ReadYourWrites } from './routing/read-your-writes.ts'
import { RouteTable } from './routing/routes.ts'
import { adminRoutes } from './admin/routes.ts'
import { consoleRoutes } from './admin/console.ts'
import { closeAll, Listeners } from './background.ts'
import { RolloutControl } from './control/commands.ts'
import { auditHandChanges } from './control/hand-changes.ts'
import { Notifier } from './control/notify.ts'
import { createGuards } from './guards/index.ts'
import type { GuardContext } from './guards/events.ts'
import { dryRunTrip, tripRollout } from './guards/trip.ts'
import { localRaiseGate } from './health/gate.ts'
import { PoolHealth } from './health/pool-health.ts'
import type { MemberChange } from './health/member.ts'
import type { Version } from './routing/decide.ts'
import { readTls, reload, reloadRoute, type ReloadResult } from './reload.ts'
import { requireToken } from './admin/auth.ts'
import { Heartbeat } from './fleet/heartbeat.ts'
import { ScheduleRunner, runnerTimings } from './schedule/runner.ts'
import { ScheduleStore } from './rollout/schedule-store.ts'
import { restartBakeOnDryRun } from './schedule/alarms.ts'

/** What the outside world provides; tests pass their own, production lets buildApp create them. */
export interface AppDeps {
  log: Logger
  registry?: Registry
  redis?: RedisClient
  subscriber?: RedisClient
  now?: () => number
  /** Reads the configuration again for a reload (SIGHUP, POST /reload); the file and the environment by default. */
  loadConfig?: () => Config
  /** The address of a relay whose X-Forwarded-For names the caller of an admin request (the workers' primary). */
  adminTrustProxy?: string
}

/** The largest admin request body, in bytes (the workers' primary enforces the same). */
export const ADMIN_BODY_LIMIT = 16_384

/** The parts of a running dbshift: those the admin routes see, and the servers and background work around them. */
export interface App extends Omit<AdminOptions, 'now' | 'schedules' | 'heartbeat'> {
  proxy: FastifyInstance
  admin: FastifyInstance
  /** The pools requests go to now (a reload swaps them), and each member's health. */
  pools: Pools
  poolHealth: PoolHealth
  /** Open WebSockets and event streams, which follow the rollout while they are open. */
  connections: OpenConnections
  heartbeat: Heartbeat
  schedules: ScheduleStore
  scheduleRunner: ScheduleRunner
  /** Re-reads and applies the configuration (SIGHUP, POST /reload); a bad one is refused whole and counted. */
  reload: () => Promise<ReloadResult>
  /** Starts following Redis and listens on both ports (config.listen and config.adminListen). */
  listen: () => Promise<{ proxy: AddressInfo, admin: AddressInfo }>
  /** Stops taking requests, drains those in flight, then closes pools and Redis. */
  close: (options?: { noticeMs?: number }) => Promise<void>
}

/** Wires every part together; never listens by itself. */
export async function buildApp (config: Config, deps: AppDeps): Promise<App> {
  const { log } = deps
  const now = deps.now ?? Date.now
  const instanceId = config.instanceId ?? `${hostname()}:${process.pid}`
  const registry = deps.registry ?? new Registry()
  const routeNames = config.routes.map((route) => route.name)
  const metrics = new Metrics(registry, { routes: routeNames })
  const keys = new RolloutKeys(config.redis.prefix, config.rollout.name)
  const ownsRedis = deps.redis === undefined
  const redisOptions = { commandTimeoutMs: config.redis.commandTimeoutMs, connectionName: `dbshift:${instanceId}` }
  const redis = deps.redis ?? connectRedis(config.redis.url, redisOptions)
  const subscriber = deps.subscriber ?? connectRedis(config.redis.url, { ...redisOptions, subscriber: true })
  const listeners = new Listeners()
  const health = watchRedis(redis, metrics, log, now, listeners)
  // Reported through the control connection; ioredis needs a listener, or an error would end the process.
  listeners.on(subscriber, 'error', (err: Error) => { log.debug({ err }, 'Redis subscriber connection error') })
  const subscriberHealth = redisHealth(subscriber, now) // guards its parser too

  const store = new RolloutStore(redis, keys, { initialPercent: config.rollout.initialPercent, routes: routeNames })
  const sync = new RolloutSync(store, redis, subscriber, {
    initialPercent: config.rollout.initialPercent,
    pollIntervalMs: config.redis.pollIntervalMs,
    fullSyncIntervalMs: config.redis.fullSyncIntervalMs,
    startupWaitMs: config.redis.commandTimeoutMs,
    now,
    failures: metrics.backgroundErrors.labels('rollout_poll')
  }, log)
  // One route table, replaced in place by a reload: the forwarder, the WebSocket handshakes and /which share it.
  const routes = new RouteTable(config.routes)
  metrics.showDials(sync.current, routes.routes)
  sync.on('change', (next, previous) => {
    metrics.showDials(next, routes.routes)
    metrics.rolledBack.set(next.rolledBack ? 1 : 0)
    log.info({ percent: next.percent, state: next.state, trip: next.trip, allow: next.allow.size, deny: next.deny.size, previous: { percent: previous.percent, state: previous.state } }, 'rollout state changed')
  })
  sync.on('invalid', ({ key, value, rule }) => {
    metrics.configErrors.inc()
    log.error({ key, value, rule }, `ignored an invalid value in Redis: ${key} must be ${rule}; keeping the last valid state`)
  })

  const traffic = new TrafficWindow({ now })
  const router = routerFor(config.rollout)
  const schedules = new ScheduleStore(redis, keys)
  const notifier = new Notifier({ ...config.notify, rollout: config.rollout.name, log, failures: metrics.backgroundErrors.labels('notify') })
  const reverseLag = new ReverseLag()
  const wayBack = { ...config.guards.wayBack, pollMs: config.guards.signalPollIntervalMs }
  const control = new RolloutControl({ redis, store, schedules, initialPercent: config.rollout.initialPercent, log, now, sync, metrics, notifier, wayBack, reverseLag, raiseGate: localRaiseGate(() => poolHealth.migratedHealthy()) })
  const guardContext: GuardContext = { config, instanceId, sync, store, control, redis, traffic, metrics, log, now, router, reverseLag }
  const guards = createGuards(guardContext)
  const poolHealth = new PoolHealth({
    metrics,
    log,
    now,
    rollout: () => sync.current,
    rules: () => config.guards.l1,
    trip: (reason) => {
      if (config.guards.l1.dryRun) dryRunTrip(guardContext, guards.events, 'L1', reason)
      else tripRollout(guardContext, guards.events, 'L1', reason).catch((err: unknown) => { log.error({ err }, 'the L1 trip on an unhealthy migrated pool failed') })
    }
  })
  const pools = createPools(config, { now, onChange: poolHealth.onChange })
  const heartbeat = new Heartbeat({ instanceId, redis, control, sync, traffic, intervalMs: config.redis.heartbeatIntervalMs, now, log, failures: metrics.backgroundErrors.labels('heartbeat'), migratedHealthy: () => poolHealth.migratedHealthy(), pools: () => poolHealth.summary() })
  const scheduleRunner = new ScheduleRunner({ instanceId, store, schedules, control, redis, ...runnerTimings(config.redis.pollIntervalMs), now, log, failures: metrics.backgroundErrors.labels('schedule') })
  listeners.on(sync, 'change', () => { scheduleRunner.checkNow() }) // a trip aborts the schedule at once
  listeners.on(sync, 'eventReceived', () => { scheduleRunner.checkNow() }) // a schedule started or changed is taken up at once
  // The fleet sees a change of a pool's health at once (the dbshift command's raise gate reads the migrated pool's),
  // and notify hears of it, once per change, in the background.
  listeners.on(poolHealth, 'change', (version: Version, change: MemberChange) => {
    heartbeat.beat().catch((err: unknown) => { log.debug({ err }, 'heartbeat after a change of pool health failed; the next one follows') })
    notifier.member({ version, member: redactUrl(change.member.name), healthy: change.serving, why: change.why, at: now() })
  })
  const stopHandAudit = auditHandChanges({ sync, store, control, instanceId, log })
  const stopDryRunHold = restartBakeOnDryRun(guards.events, control, instanceId, log)
  const keyReader = new UserKeyReader(config.identity.header, config.identity.cookie)
  const headers = headerPolicy(config.server.trustedProxies, config.upstream.preserveHost)
  const connections = new OpenConnections({ router, rollout: () => sync.current, metrics, log, spreadMs: config.server.reconnectSpreadMs })
  listeners.on(sync, 'change', (next: RolloutSnapshot) => { connections.reconsider(next) })
  const streams = new StreamTracker(connections, keyReader, guards.hooks.tap)
  // The forwarder reads its deps per request (a reload sets readYourWrites).
  const readYourWrites = (windowMs: number): ReadYourWrites | undefined => windowMs === 0
    ? undefined
    : new ReadYourWrites({ windowMs, secret: config.rollout.cookieSecret, rollout: config.rollout.name, secure: config.tls !== undefined })
  const forwardDeps: ForwarderDeps = {
    router,
    keyReader,
    rollout: () => sync.current,
    pools,
    metrics,
    traffic,
    log,
    requestLogLevel: config.log.requests,
    retries: config.upstream.retries,
    maxInFlight: config.server.maxInFlight,
    maxUrlBytes: config.server.maxUrlBytes,
    headers,
    stuckMs: config.guards.l1.stuckMs,
    queueTimeoutMs: config.upstream.queueTimeoutMs,
    writeTimeoutMs: config.server.writeTimeoutMs,
    hooks: { ...guards.hooks, tap: streams.tap },
    draining: () => draining,
    routes,
    readYourWrites: readYourWrites(config.rollout.readYourWritesMs),
    now
  }
  const forward = createForwarder(forwardDeps)
  const setReadYourWrites = (windowMs: number): void => {
    if (windowMs !== 0 && forwardDeps.readYourWrites !== undefined) forwardDeps.readYourWrites.windowMs = windowMs // the marks made stay
    else forwardDeps.readYourWrites = readYourWrites(windowMs)
  }

  const proxy = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    // A target fastify cannot route (bad percent-encoding, …) gets the same JSON shape as every other refusal.
    frameworkErrors: (error, _request, reply) => {
      reply.hijack()
      metrics.recordRefused('bad_request')
      sendError(reply.raw, new BadRequestError(error.message), undefined, { connection: 'close' })
    },
    exposeHeadRoutes: false,
    // While draining, requests already on a connection are still served (with Connection: close), not refused.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    serverFactory: (handler) => proxyServer(config, handler, metrics)
  })
  // Bodies are streamed to the upstream untouched: no parser may read them.
  proxy.removeAllContentTypeParsers()
  proxy.addContentTypeParser('*', (_request, _payload, done) => { done(null) })
  proxy.route({
    method: proxy.supportedMethods,
    url: '/*',
    handler: (request, reply) => {
      reply.hijack()
      streams.watch(request.raw, reply.raw)
      forward(request.raw, reply.raw)
    }
  })
  proxy.server.on('upgrade', createUpgradeHandler({
    router,
    keyReader,
    rollout: () => sync.current,
    pools,
    metrics,
    traffic,
    log,
    requestLogLevel: config.log.requests,
    headers,
    connections,
    retries: config.upstream.retries,
    maxUpgraded: config.server.maxUpgraded,
    maxUrlBytes: config.server.maxUrlBytes,
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    headersTimeoutMs: config.upstream.headersTimeoutMs,
    pausedFor: guards.hooks.pausedFor,
    routes,
    get readYourWrites () { return forwardDeps.readYourWrites },
    now,
    draining: () => draining,
    plain: forward
  }))

  // An unknown field or a value of the wrong type in an admin body is refused (400), never dropped or converted;
  // multipleOf is checked with a tolerance so that 33.33 is a multiple of 0.01 despite binary floating point.
  const adminAjv = { customOptions: { removeAdditional: false, coerceTypes: false, multipleOfPrecision: 6 } } as const
  const admin = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: ADMIN_BODY_LIMIT,
    ajv: adminAjv,
    trustProxy: deps.adminTrustProxy ?? false,
    // Path parameters up to a user key of 256 bytes, percent-encoded (3 characters a byte), and some room.
    routerOptions: { maxParamLength: 1_024 }
  })
  // First: a request under a name that is not the admin port's own (DNS rebinding) reaches no route, the console's included.
  const checkHost = hostCheck(parseHostPort(config.adminListen).host, config.admin.allowedHosts)
  admin.addHook('onRequest', async (request, reply) => {
    try { checkHost(request.headers.host) } catch (err) { return await reply.code(403).send({ error: (err as { code: string }).code, message: (err as Error).message }) }
  })
  await admin.register(consoleRoutes, { config, metrics, traffic, guards, sync, redis, keys, now }) // first: its read check covers every route
  const adminOptions: AdminOptions = { config, instanceId, sync, store, control, metrics, registry, traffic, router, redis, guards, schedules, heartbeat, poolHealth, routes, now }
  const reloadConfig = async (): Promise<ReloadResult> => await reload({
    config, pools, poolHealth, routes, store, headers, refresh: async () => { await sync.refresh() }, setReadYourWrites, onPools: guards.reloadPools, metrics, log, now, setSecureContext: (context) => { (proxy.server as unknown as TlsServer).setSecureContext(context) }
  }, deps.loadConfig ?? (() => loadConfig()))
  // One scope, so that POST /reload answers errors in the same shape as every admin route.
  await admin.register(async (scope) => {
    await adminRoutes(scope, adminOptions)
    reloadRoute(scope, { change: { onRequest: requireToken(config.admin.token, config.admin.tokenName).hook }, reload: reloadConfig })
  })

  let closing: Promise<void> | undefined
  let draining = false
  const app: App = {
    config,
    instanceId,
    proxy,
    admin,
    sync,
    store,
    control,
    metrics,
    registry,
    traffic,
    router,
    connections,
    redis,
    guards,
    pools,
    poolHealth,
    heartbeat,
    schedules,
    scheduleRunner,
    reload: reloadConfig,
    async listen () {
      await sync.start()
      guards.start()
      poolHealth.attach(pools)
      heartbeat.start()
      scheduleRunner.start()
      await proxy.listen(parseHostPort(config.listen))
      await admin.listen(parseHostPort(config.adminListen))
      return { proxy: proxy.server.address() as AddressInfo, admin: admin.server.address() as AddressInfo }
    },
    async close (options = {}) {
      closing ??= (async () => {
        draining = true
        // Open WebSockets hear 1001 (going away) and event streams end now, so their clients reconnect elsewhere
        // while this instance drains; the HTTP server cannot finish closing while they are open.
        const upgradedClosed = connections.closeAll(CLOSE_GOING_AWAY)
        // From now on every answer says Connection: close. Before idle connections are closed (which can cross a
        // request a client is just sending on one), give busy clients time to hear it and leave on their own.
        if (options.noticeMs !== undefined) await new Promise((resolve) => setTimeout(resolve, options.noticeMs))
        // An answer that was already under way when the drain began leaves its connection idle: close those too.
        await upgradedClosed
        const idle = setInterval(() => proxy.server.closeIdleConnections(), 250).unref()
        // Every step runs even when an earlier one fails; the failures are reported together at the end.
        await closeAll([
          ['the proxy and admin servers', async () => await Promise.all([proxy.close(), admin.close()]).finally(() => clearInterval(idle))],
          ['the guards', async () => { await guards.close() }],
          ['the ramp schedule runner', async () => { await scheduleRunner.close() }],
          ['the heartbeat', async () => { await heartbeat.close() }],
          ['the change listeners', () => {
            stopHandAudit()
            stopDryRunHold()
          }],
          ['the rollout sync', async () => { await sync.close() }],
          ['the notifications under way', async () => { await notifier.flush() }],
          ['the upstream pools', async () => {
            poolHealth.close()
            await closePools(pools)
          }],
          ['the Redis connections', () => {
            health.close()
            subscriberHealth.close()
            if (!ownsRedis) return
            redis.disconnect()
            subscriber.disconnect()
          }],
          // Last: the error listeners stay while the connections close (ioredis wants one for every error).
          ['the Redis and rollout listeners', () => { listeners.removeAll() }]
        ], log)
      })()
      await closing
    }
  }
  return app
}

/** The proxy's HTTP server, with the limits that protect it from slow and oversized clients. */
function proxyServer (config: Config, handler: Parameters<typeof createServer>[1], metrics: Metrics): Server {
  const options = {
    maxHeaderSize: config.server.maxHeaderBytes,
    requestTimeout: config.server.requestTimeoutMs,
    headersTimeout: config.server.headersTimeoutMs,
    // Node checks both timeouts only this often (30 s by default), which would let a slow client stay 30 s longer.
    connectionsCheckingInterval: Math.min(1_000, config.server.headersTimeoutMs),
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    // Two Content-Length values, CL with TE and other ambiguous framing are refused by Node's parser (not lenient).
    insecureHTTPParser: false
  }
  // HTTPS with Node's defaults (TLS 1.2 and 1.3, Node's default cipher list); a reload swaps the certificate.
  const server = config.tls !== undefined ? createHttpsServer({ ...options, ...readTls(config.tls) }, handler) as unknown as Server : createServer(options, handler)
  // What Node's parser refuses (431, 408, malformed framing) never reaches a route: count it here. Fastify's own
  // clientError listener writes the answer.
  server.on('clientError', (err: Error & { code?: string }) => {
    if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return // the client left: nothing was answered
    metrics.recordRefused(err.code === 'HPE_HEADER_OVERFLOW' ? 'headers_too_large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'bad_request')
  })
  return server
}

/**
 * Keeps dbshift_redis_up true to what Redis lets this instance do (1 only while its commands are accepted), and logs
 * each change of state once, not per retry: connected, refusing (and why), lost, or unreachable from the start.
 */
function watchRedis (redis: RedisClient, metrics: Metrics, log: Logger, now: () => number, listeners: Listeners): RedisHealth {
  const health = redisHealth(redis, now)
  let everConnected = false
  const report = (state: RedisState, reason: string | null, previous: RedisState): void => {
    metrics.redisUp.set(state === 'connected' ? 1 : 0)
    if (state === 'connected') {
      log.info(previous === 'refusing' ? 'Redis accepts commands again' : 'connected to Redis')
      everConnected = true
    } else if (state === 'refusing') {
      log.error({ reason }, `Redis refuses commands: ${reason ?? ''}; routing on the last valid state, and what must be written is retried until Redis takes it`)
    } else if (everConnected || previous === 'refusing') {
      log.warn({ reason }, 'lost the connection to Redis; routing on the last valid state and reconnecting')
    } else {
      log.warn({ reason }, 'Redis is unreachable; routing on the last valid state (or the initial one) and retrying in the background')
    }
  }
  listeners.on(health, 'change', report)
  // A client that was never connected is reported as unreachable at its first error (not before: it may connect at once).
  // Each different error is logged once (a refused login, a refused connection), not on every retry.
  let warnedAtStart = false
  let lastError = ''
  listeners.on(redis, 'error', (err: Error) => {
    if (!warnedAtStart && !everConnected && health.state === 'disconnected') {
      warnedAtStart = true
      report('disconnected', health.reason, 'disconnected')
    }
    if (err.message === lastError) return
    lastError = err.message
    log.warn({ err }, `Redis error: ${err.message}`)
  })
  redis.on('ready', () => { lastError = '' })
  if (health.state === 'connected') report('connected', null, 'disconnected')
  return health
}
