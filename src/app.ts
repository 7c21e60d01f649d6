import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { parseHostPort, type Config } from './config.ts'
import { BadRequestError } from './errors.ts'
import { hostCheck } from './admin/hosts.ts'
import { Metrics } from './metrics.ts'
import { Router } from './routing/decide.ts'
import { UserKeyReader } from './routing/user-key.ts'
import { RolloutKeys } from './rollout/keys.ts'
import { connectRedis, type RedisClient } from './rollout/redis.ts'
import { redisHealth, type RedisHealth, type RedisState } from './rollout/redis-health.ts'
import { RolloutStore } from './rollout/store.ts'
import { RolloutSync } from './rollout/sync.ts'
import { TrafficWindow } from './traffic/window.ts'
import { createPools, closePools } from './proxy/pools.ts'
import { createForwarder, sendError } from './proxy/forward.ts'
import { adminRoutes } from './admin/routes.ts'
import { createGuards, type Guards } from './guards/index.ts'
import { Heartbeat } from './fleet/heartbeat.ts'
import { auditHandChanges } from './fleet/hand-changes.ts'
import { ScheduleRunner, runnerTimings } from './schedule/runner.ts'
import { ScheduleStore } from './schedule/store.ts'
import { restartBakeOnDryRun } from './schedule/alarms.ts'

/** What the outside world provides; tests pass their own, production lets buildApp create them. */
export interface AppDeps {
  log: Logger
  registry?: Registry
  redis?: RedisClient
  subscriber?: RedisClient
  now?: () => number
  /** The address of a relay whose X-Forwarded-For names the caller of an admin request (the workers' primary). */
  adminTrustProxy?: string
}

/** The largest admin request body, in bytes (the workers' primary enforces the same). */
export const ADMIN_BODY_LIMIT = 16_384

export interface App {
  config: Config
  instanceId: string
  proxy: FastifyInstance
  admin: FastifyInstance
  sync: RolloutSync
  store: RolloutStore
  metrics: Metrics
  registry: Registry
  traffic: TrafficWindow
  router: Router
  redis: RedisClient
  guards: Guards
  heartbeat: Heartbeat
  schedules: ScheduleStore
  scheduleRunner: ScheduleRunner
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
  const metrics = new Metrics(registry)
  const keys = new RolloutKeys(config.redis.prefix, config.rollout.name)
  const ownsRedis = deps.redis === undefined
  const redisOptions = { commandTimeoutMs: config.redis.commandTimeoutMs, connectionName: `dbshift:${instanceId}` }
  const redis = deps.redis ?? connectRedis(config.redis.url, redisOptions)
  const subscriber = deps.subscriber ?? connectRedis(config.redis.url, { ...redisOptions, subscriber: true })
  const health = watchRedis(redis, metrics, log, now)
  subscriber.on('error', () => {}) // reported through the control connection; ioredis needs a listener
  const subscriberHealth = redisHealth(subscriber, now) // guards its parser too

  const store = new RolloutStore(redis, keys, { initialPercent: config.rollout.initialPercent, now })
  const sync = new RolloutSync(store, redis, subscriber, {
    initialPercent: config.rollout.initialPercent,
    pollIntervalMs: config.redis.pollIntervalMs,
    fullSyncIntervalMs: config.redis.fullSyncIntervalMs,
    startupWaitMs: config.redis.commandTimeoutMs,
    now
  }, log)
  metrics.rolloutPercent.set(sync.current.percent)
  sync.on('change', (next, previous) => {
    metrics.rolloutPercent.set(next.percent)
    metrics.rolledBack.set(next.rolledBack ? 1 : 0)
    log.info({ percent: next.percent, state: next.state, trip: next.trip, allow: next.allow.size, deny: next.deny.size, previous: { percent: previous.percent, state: previous.state } }, 'rollout state changed')
  })
  sync.on('invalid', ({ key, value, rule }) => {
    metrics.configErrors.inc()
    log.error({ key, value, rule }, `ignored an invalid value in Redis: ${key} must be ${rule}; keeping the last valid state`)
  })

  const traffic = new TrafficWindow({ now })
  const router = new Router({ strategy: config.rollout.strategy, salt: config.rollout.salt ?? config.rollout.name, anonymous: config.rollout.anonymous })
  const pools = createPools(config)
  const guards = createGuards({ config, instanceId, sync, store, redis, traffic, metrics, log, now })
  const heartbeat = new Heartbeat({ instanceId, redis, keys, sync, traffic, intervalMs: config.redis.heartbeatIntervalMs, now, log })
  const schedules = new ScheduleStore(redis, keys, now)
  const scheduleRunner = new ScheduleRunner({ instanceId, store, schedules, redis, initialPercent: config.rollout.initialPercent, ...runnerTimings(config.redis.pollIntervalMs), now, log })
  sync.on('change', () => { scheduleRunner.kick() }) // a trip aborts the schedule at once
  sync.on('announced', () => { scheduleRunner.kick() }) // a schedule started or changed is taken up at once
  const stopHandAudit = auditHandChanges({ sync, store, redis, instanceId, log })
  const stopDryRunHold = restartBakeOnDryRun(guards.events, schedules, instanceId, log)
  const forward = createForwarder({
    router,
    keyReader: new UserKeyReader(config.identity.header, config.identity.cookie),
    rollout: () => sync.current,
    pools,
    metrics,
    traffic,
    log,
    requestLogLevel: config.log.requests,
    retries: config.upstream.retries,
    maxInFlight: config.server.maxInFlight,
    maxUrlBytes: config.server.maxUrlBytes,
    hooks: guards.hooks,
    draining: () => draining
  })

  const proxy = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    // A target fastify cannot route (bad percent-encoding, …) gets the same JSON shape as every other refusal.
    frameworkErrors: (error, _request, reply) => {
      reply.hijack()
      sendError(reply.raw, new BadRequestError(error.message), undefined, { connection: 'close' })
    },
    exposeHeadRoutes: false,
    // While draining, requests already on a connection are still served (with Connection: close), not refused.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    serverFactory: (handler) => proxyServer(config, handler)
  })
  // Bodies are streamed to the upstream untouched: no parser may read them.
  proxy.removeAllContentTypeParsers()
  proxy.addContentTypeParser('*', (_request, _payload, done) => { done(null) })
  proxy.route({
    method: proxy.supportedMethods,
    url: '/*',
    handler: (request, reply) => {
      reply.hijack()
      forward(request.raw, reply.raw)
    }
  })

  // An unknown field or a value of the wrong type in an admin body is refused (400), never dropped or converted;
  // multipleOf is checked with a tolerance so that 33.33 is a multiple of 0.01 despite binary floating point.
  const adminAjv = { customOptions: { removeAdditional: false, coerceTypes: false, multipleOfPrecision: 6 } } as const
  const admin = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: ADMIN_BODY_LIMIT,
    ajv: adminAjv,
    trustProxy: deps.adminTrustProxy ?? false
  })
  const checkHost = hostCheck(parseHostPort(config.adminListen).host, config.admin.allowedHosts)
  admin.addHook('onRequest', async (request, reply) => {
    try { checkHost(request.headers.host) } catch (err) { return await reply.code(403).send({ error: (err as { code: string }).code, message: (err as Error).message }) }
  })
  await admin.register(adminRoutes, { config, instanceId, sync, store, metrics, registry, traffic, router, redis, guards, schedules, heartbeat, now })

  let closing: Promise<void> | undefined
  let draining = false
  const app: App = {
    config,
    instanceId,
    proxy,
    admin,
    sync,
    store,
    metrics,
    registry,
    traffic,
    router,
    redis,
    guards,
    heartbeat,
    schedules,
    scheduleRunner,
    async listen () {
      await sync.start()
      guards.start()
      heartbeat.start()
      scheduleRunner.start()
      await proxy.listen(parseHostPort(config.listen))
      await admin.listen(parseHostPort(config.adminListen))
      return { proxy: proxy.server.address() as AddressInfo, admin: admin.server.address() as AddressInfo }
    },
    async close (options = {}) {
      closing ??= (async () => {
        draining = true
        // From now on every answer says Connection: close. Before idle connections are closed (which can cross a
        // request a client is just sending on one), give busy clients time to hear it and leave on their own.
        if (options.noticeMs !== undefined) await new Promise((resolve) => setTimeout(resolve, options.noticeMs))
        // An answer that was already under way when the drain began leaves its connection idle: close those too.
        const idle = setInterval(() => proxy.server.closeIdleConnections(), 250).unref()
        await Promise.all([proxy.close(), admin.close()]).finally(() => clearInterval(idle))
        await guards.close()
        await scheduleRunner.close()
        await heartbeat.close()
        stopHandAudit()
        stopDryRunHold()
        await sync.close()
        await closePools(pools)
        health.close()
        subscriberHealth.close()
        if (ownsRedis) {
          redis.disconnect()
          subscriber.disconnect()
        }
      })()
      await closing
    }
  }
  return app
}

/** The proxy's HTTP server, with the limits that protect it from slow and oversized clients. */
function proxyServer (config: Config, handler: Parameters<typeof createServer>[1]): Server {
  const server = createServer({
    maxHeaderSize: config.server.maxHeaderBytes,
    requestTimeout: config.server.requestTimeoutMs,
    headersTimeout: config.server.headersTimeoutMs,
    // Node checks both timeouts only this often (30 s by default), which would let a slow client stay 30 s longer.
    connectionsCheckingInterval: Math.min(1_000, config.server.headersTimeoutMs),
    keepAliveTimeout: config.server.keepAliveTimeoutMs,
    // Two Content-Length values, CL with TE and other ambiguous framing are refused by Node's parser (not lenient).
    insecureHTTPParser: false
  }, handler)
  return server
}

/**
 * Keeps dbshift_redis_up true to what Redis lets this instance do (1 only while its commands are accepted), and logs
 * each change of state once, not per retry: connected, refusing (and why), lost, or unreachable from the start.
 */
function watchRedis (redis: RedisClient, metrics: Metrics, log: Logger, now: () => number): RedisHealth {
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
  health.on('change', report)
  // A client that was never connected is reported as unreachable at its first error (not before: it may connect at once).
  // Each different error is logged once (a refused login, a refused connection), not on every retry.
  let warnedAtStart = false
  let lastError = ''
  redis.on('error', (err: Error) => {
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
