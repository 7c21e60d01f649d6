import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { hostname } from 'node:os'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { Registry } from 'prom-client'
import { parseHostPort, type Config } from './config.ts'
import { BadRequestError } from './errors.ts'
import { Metrics } from './metrics.ts'
import { routerFor } from './routing/configured.ts'
import { UserKeyReader } from './routing/user-key.ts'
import { RolloutKeys } from './rollout/keys.ts'
import { connectRedis, type RedisClient } from './rollout/redis.ts'
import { RolloutStore } from './rollout/store.ts'
import { RolloutSync } from './rollout/sync.ts'
import { ReverseLag } from './rollout/way-back.ts'
import { TrafficWindow } from './traffic/window.ts'
import { createPools, closePools } from './proxy/pools.ts'
import { createForwarder, sendError } from './proxy/forward.ts'
import type { AdminOptions } from './admin/options.ts'
import { adminRoutes } from './admin/routes.ts'
import { closeAll, Listeners } from './background.ts'
import { RolloutControl } from './control/commands.ts'
import { auditHandChanges } from './control/hand-changes.ts'
import { Notifier } from './control/notify.ts'
import { createGuards } from './guards/index.ts'
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
}

/** The parts of a running dbshift: those the admin routes see, and the servers and background work around them. */
export interface App extends Omit<AdminOptions, 'now' | 'schedules' | 'heartbeat'> {
  proxy: FastifyInstance
  admin: FastifyInstance
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
  const listeners = new Listeners()
  watchRedis(redis, metrics, log, listeners)
  // Reported through the control connection; ioredis needs a listener, or an error would end the process.
  listeners.on(subscriber, 'error', (err: Error) => { log.debug({ err }, 'Redis subscriber connection error') })

  const store = new RolloutStore(redis, keys, { initialPercent: config.rollout.initialPercent })
  const sync = new RolloutSync(store, redis, subscriber, {
    initialPercent: config.rollout.initialPercent,
    pollIntervalMs: config.redis.pollIntervalMs,
    fullSyncIntervalMs: config.redis.fullSyncIntervalMs,
    startupWaitMs: config.redis.commandTimeoutMs,
    now,
    failures: metrics.backgroundErrors.labels('rollout_poll')
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
  const router = routerFor(config.rollout)
  const pools = createPools(config)
  const schedules = new ScheduleStore(redis, keys)
  const notifier = new Notifier({ ...config.notify, rollout: config.rollout.name, log, failures: metrics.backgroundErrors.labels('notify') })
  const reverseLag = new ReverseLag()
  const wayBack = { ...config.guards.wayBack, pollMs: config.guards.signalPollIntervalMs }
  const control = new RolloutControl({ redis, store, schedules, initialPercent: config.rollout.initialPercent, log, now, sync, metrics, notifier, wayBack, reverseLag })
  const guards = createGuards({ config, instanceId, sync, store, control, redis, traffic, metrics, log, now, router, reverseLag })
  const heartbeat = new Heartbeat({ instanceId, redis, control, sync, traffic, intervalMs: config.redis.heartbeatIntervalMs, now, log, failures: metrics.backgroundErrors.labels('heartbeat') })
  const scheduleRunner = new ScheduleRunner({ instanceId, store, schedules, control, redis, ...runnerTimings(config.redis.pollIntervalMs), now, log, failures: metrics.backgroundErrors.labels('schedule') })
  listeners.on(sync, 'change', () => { scheduleRunner.checkNow() }) // a trip aborts the schedule at once
  listeners.on(sync, 'eventReceived', () => { scheduleRunner.checkNow() }) // a schedule started or changed is taken up at once
  const stopHandAudit = auditHandChanges({ sync, store, control, instanceId, log })
  const stopDryRunHold = restartBakeOnDryRun(guards.events, control, instanceId, log)
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
  // Path parameters up to a user key of 256 bytes, percent-encoded (3 characters a byte), and some room.
  const admin = Fastify({ loggerInstance: log as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }), bodyLimit: 16_384, ajv: adminAjv, routerOptions: { maxParamLength: 1_024 } })
  await admin.register(adminRoutes, { config, instanceId, sync, store, control, metrics, registry, traffic, router, redis, guards, schedules, heartbeat, now })

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
          ['the upstream pools', async () => { await closePools(pools) }],
          ['the Redis connections', () => {
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

/** Keeps dbshift_redis_up true to the connection, and logs each loss of Redis once, not per retry. */
function watchRedis (redis: RedisClient, metrics: Metrics, log: Logger, listeners: Listeners): void {
  let up = false
  listeners.on(redis, 'ready', () => {
    if (!up) log.info('connected to Redis')
    up = true
    metrics.redisUp.set(1)
  })
  listeners.on(redis, 'close', () => {
    if (up) log.warn('lost the connection to Redis; routing on the last valid state and reconnecting')
    up = false
    metrics.redisUp.set(0)
  })
  let warnedAtStart = false
  listeners.on(redis, 'error', (err: Error) => {
    if (up) log.warn({ err }, 'Redis error')
    else if (!warnedAtStart) log.warn({ err }, 'Redis is unreachable; routing on the last valid state (or the initial one) and retrying in the background')
    warnedAtStart = true
  })
}
