import type { FastifyInstance, FastifyError } from 'fastify'
import type { Registry } from 'prom-client'
import type { Config } from '../config.ts'
import { BadRequestError, InvalidValueError, RampFrozenError, RedisUnavailableError } from '../errors.ts'
import type { Metrics } from '../metrics.ts'
import { VERSIONS, type Router } from '../routing/decide.ts'
import { fromByteString, toByteString, MAX_KEY_BYTES } from '../routing/user-key.ts'
import { isReady, type RedisClient } from '../rollout/redis.ts'
import { redisHealth } from '../rollout/redis-health.ts'
import { redactUrls } from '../redact.ts'
import type { Actor, RolloutStore } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { TrafficWindow } from '../traffic/window.ts'
import { requireToken } from './auth.ts'
import type { Guards } from '../guards/index.ts'
import type { Heartbeat } from '../fleet/heartbeat.ts'
import type { ScheduleStore } from '../schedule/store.ts'
import { operationRoutes } from './operations.ts'

export interface AdminOptions {
  config: Config
  instanceId: string
  sync: RolloutSync
  store: RolloutStore
  metrics: Metrics
  registry: Registry
  traffic: TrafficWindow
  router: Router
  redis: RedisClient
  guards: Guards
  schedules?: ScheduleStore
  heartbeat?: Heartbeat
  now: () => number
}

/** The window /status reports rates over. */
const STATUS_WINDOW_MS = 60_000

/** Health, metrics, status, `which`, and the authenticated changes (SPEC "Interfaces"). */
export async function adminRoutes (app: FastifyInstance, options: AdminOptions): Promise<void> {
  const { config, sync, store, registry, traffic, router, redis, now } = options
  const auth = requireToken(config.admin.token, config.admin.tokenName)
  const authenticate = auth.identity
  const change = { onRequest: auth.hook }
  const actor = (by: string): Actor => ({ by, source: 'api' })

  app.setErrorHandler((err: FastifyError, _request, reply) => {
    const status = err.statusCode ?? 500
    const code = err.validation !== undefined ? 'DBSHIFT_ERR_INVALID_VALUE' : err.code?.startsWith('DBSHIFT_ERR_') === true ? err.code : 'DBSHIFT_ERR_BAD_REQUEST'
    if (status >= 500 && err.code?.startsWith('DBSHIFT_ERR_') !== true) app.log.error({ err }, 'admin request failed')
    reply.code(status).send({ error: status >= 500 && !code.startsWith('DBSHIFT_ERR_') ? 'internal error' : code, message: err.message })
  })

  // `curl -X POST -H 'content-type: application/json' …/resume` with no body means "no options", not an error.
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    if ((body as string).trim() === '') return done(null, undefined)
    try {
      done(null, JSON.parse(body as string))
    } catch (err) {
      done(new BadRequestError(`the body is not valid JSON (${(err as Error).message})`, { cause: err }), undefined)
    }
  })

  app.get('/healthz', async () => ({ status: 'ok' }))

  // Ready while the proxy can route: Redis is reported, not required (routing goes on with the last valid state).
  app.get('/readyz', async () => ({ status: 'ready', redis: redisHealth(redis).state, lastSyncAt: iso(sync.lastSyncAt) }))

  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', registry.contentType)
    return await registry.metrics()
  })

  app.get('/status', async () => {
    const current = sync.current
    const perVersion = Object.fromEntries(VERSIONS.map((version) => {
      const { requests, errors } = traffic.totals(version, STATUS_WINDOW_MS)
      return [version, { requestsPerSecond: round(requests / (STATUS_WINDOW_MS / 1000)), errorRate: requests === 0 ? 0 : round(errors / requests), requests, errors }]
    }))
    return {
      rollout: config.rollout.name,
      instance: options.instanceId,
      percent: current.percent,
      state: current.state,
      trip: current.trip ?? null,
      allow: current.allow.size,
      deny: current.deny.size,
      strategy: config.rollout.strategy,
      redis: { connected: isReady(redis), state: redisHealth(redis).state, reason: redisHealth(redis).reason, lastSyncAt: iso(sync.lastSyncAt), rollbackPending: sync.rollbackPending },
      traffic: { windowSeconds: STATUS_WINDOW_MS / 1000, ...perVersion },
      guards: { config: redactUrls(config.guards), ...options.guards.status() }
    }
  })

  app.get<{ Params: { userKey: string } }>('/which/:userKey', async (request) => {
    const user = request.params.userKey
    if (Buffer.byteLength(user) > MAX_KEY_BYTES) throw new InvalidValueError(`a user key is at most ${MAX_KEY_BYTES} bytes`)
    const key = toByteString(user)
    const decision = router.decide(sync.current, key)
    return { user: fromByteString(key), version: decision.version, why: decision.why, bucket: router.bucketOf(key), percent: sync.current.percent, state: sync.current.state }
  })

  app.put<{ Body: { percent: number, reason?: string } }>('/rollout', {
    ...change,
    schema: { body: { type: 'object', required: ['percent'], additionalProperties: false, properties: { percent: { type: 'number', minimum: 0, maximum: 100, multipleOf: 0.01 }, reason: { type: 'string', maxLength: 512 } } } }
  }, async (request) => {
    const by = authenticate(request)
    if (!isReady(redis)) throw new RedisUnavailableError('moving traffic toward migrated needs Redis; try again when it is back')
    const result = await store.setPercent(request.body.percent, actor(by), request.body.reason)
    if (!result.applied) {
      request.log.warn({ percent: request.body.percent, by, frozenBecause: result.frozenBecause }, 'refused a raise of the percentage: the ramp is frozen')
      throw new RampFrozenError(result.frozenBecause || 'the L2 guard froze it')
    }
    await sync.refresh().catch(() => {})
    return { percent: request.body.percent, previous: result.old === '' ? null : result.old }
  })

  app.post<{ Body: { reason?: string } | undefined }>('/rollback', {
    ...change,
    schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 } } } }
  }, async (request, reply) => {
    const by = authenticate(request)
    const trip = { level: 'manual', reason: request.body?.reason ?? 'rolled back through the admin API', at: new Date(now()).toISOString(), by }
    const persisted = await sync.rollbackLocally(trip, actor(by))
    options.metrics.guardTrips.labels('manual').inc()
    reply.code(persisted ? 200 : 202)
    return { state: 'rolled_back', persisted, message: persisted ? 'rolled back fleet-wide' : 'rolled back on this instance; it is written to Redis as soon as Redis is reachable' }
  })

  app.post<{ Body: { reason?: string } | undefined }>('/resume', {
    ...change,
    schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 } } } }
  }, async (request) => {
    const by = authenticate(request)
    if (!isReady(redis)) throw new RedisUnavailableError('resuming moves traffic toward migrated and needs Redis')
    const resumed = await store.resume(actor(by), request.body?.reason)
    await sync.refresh().catch(() => {})
    return { state: 'active', changed: resumed }
  })

  if (options.schedules !== undefined) await operationRoutes(app, { ...options, schedules: options.schedules, change, identity: authenticate })
}

function round (value: number): number {
  return Math.round(value * 1e4) / 1e4
}

function iso (ms: number): string | null {
  return ms === 0 ? null : new Date(ms).toISOString()
}
