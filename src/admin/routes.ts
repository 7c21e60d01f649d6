import type { FastifyInstance, FastifyError } from 'fastify'
import type { Actor } from '../control/audit.ts'
import { unwrap } from '../control/results.ts'
import { BadRequestError, InvalidValueError, NotFoundError } from '../errors.ts'
import { VERSIONS } from '../routing/decide.ts'
import { RouteTable } from '../routing/routes.ts'
import { fromByteString, MAX_KEY_BYTES } from '../routing/user-key.ts'
import { explain, explainRoutes } from '../routing/configured.ts'
import { isReady } from '../rollout/redis.ts'
import { redisHealth } from '../rollout/redis-health.ts'
import { redactUrls } from '../redact.ts'
import { WAY_BACK_MODES } from '../rollout/values.ts'
import { fenceJson } from '../guards/way-back.ts'
import { requireToken } from './auth.ts'
import type { AdminOptions } from './options.ts'
import { operationRoutes } from './operations.ts'

export type { AdminOptions } from './options.ts'

/** The window /status reports rates over. */
const STATUS_WINDOW_MS = 60_000

/** Health, metrics, status, `which`, and the authenticated changes (SPEC "Interfaces"). */
export async function adminRoutes (app: FastifyInstance, options: AdminOptions): Promise<void> {
  const { config, sync, control, registry, traffic, router, redis } = options
  const routeTable = new RouteTable(config.routes)
  const auth = requireToken(config.admin.token, config.admin.tokenName)
  const authenticate = auth.identity
  const change = { onRequest: auth.hook }
  const actor = (by: string): Actor => ({ by, source: 'api' })

  app.setErrorHandler((err: FastifyError, _request, reply) => {
    const status = err.statusCode ?? 500
    const own = err.code?.startsWith('DBSHIFT_ERR_') === true
    const code = err.validation !== undefined ? 'DBSHIFT_ERR_INVALID_VALUE' : own ? err.code : 'DBSHIFT_ERR_BAD_REQUEST'
    if (status >= 500 && !own) {
      // Not a refusal of ours: a bug or an unexpected reply. Never shown to the caller as if it were bad input.
      app.log.error({ err }, 'admin request failed')
      return reply.code(status).send({ error: 'internal error', message: err.message })
    }
    reply.code(status).send({ error: code, message: err.message })
  })
  // An unknown path gets the same {"error","message"} shape as every other refusal.
  app.setNotFoundHandler((request, reply) => {
    const err = new NotFoundError(`${request.method} ${request.url.split('?')[0] ?? ''}`)
    reply.code(404).send({ error: err.code, message: err.message })
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
      writePercent: current.writePercent ?? null,
      routes: config.routes.map((route) => ({ ...route, percent: current.routePercent.get(route.name) ?? null })),
      readYourWrites: { windowMs: config.rollout.readYourWritesMs, cookie: config.rollout.cookieSecret !== undefined },
      state: current.state,
      trip: current.trip ?? null,
      allow: current.allow.size,
      deny: current.deny.size,
      strategy: config.rollout.strategy,
      redis: { connected: isReady(redis), state: redisHealth(redis).state, reason: redisHealth(redis).reason, lastSyncAt: iso(sync.lastSyncAt), rollbackPending: sync.rollbackPending },
      traffic: { windowSeconds: STATUS_WINDOW_MS / 1000, ...perVersion },
      pools: options.poolHealth?.status() ?? null,
      wayBack: options.guards.wayBack.status(),
      guards: { config: redactUrls(config.guards), ...options.guards.status() }
    }
  })

  app.get('/way-back', async () => options.guards.wayBack.status())

  app.put<{ Body: { mode: string, reason?: string } }>('/way-back', {
    ...change,
    schema: { body: { type: 'object', required: ['mode'], additionalProperties: false, properties: { mode: { type: 'string', enum: [...WAY_BACK_MODES] }, reason: { type: 'string', maxLength: 512 } } } }
  }, async (request) => {
    const result = unwrap(await control.setWayBack(request.body.mode, actor(authenticate(request)), request.body.reason))
    return { mode: result.mode, previous: result.previous, changed: result.status === 'ok' }
  })

  app.get('/fence', async () => {
    const fence = sync.current.fence
    return { fenced: fence !== undefined, fence: fence === undefined ? null : fenceJson(fence) }
  })

  app.post<{ Body: { reason?: string } | undefined }>('/fence/release', {
    ...change,
    schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 } } } }
  }, async (request) => {
    const result = unwrap(await control.releaseFence(undefined, 'operator', actor(authenticate(request)), request.body?.reason))
    return { released: result.status === 'ok', fence: result.status === 'ok' ? result.fence : null }
  })

  app.get<{ Params: { userKey: string } }>('/which/:userKey', async (request) => {
    const user = request.params.userKey
    if (Buffer.byteLength(user) > MAX_KEY_BYTES) throw new InvalidValueError(`a user key is at most ${MAX_KEY_BYTES} bytes (this one has ${Buffer.byteLength(user)}); longer keys are anonymous`)
    const { key, decision, bucket } = explain(router, sync.current, user)
    const { routes } = explainRoutes(router, sync.current, user, routeTable)
    return {
      user: key === undefined ? user : fromByteString(key),
      version: decision.version,
      why: decision.why,
      bucket,
      percent: sync.current.percent,
      writePercent: sync.current.writePercent ?? null,
      state: sync.current.state,
      // Reads and writes on the default route (requests that match no route), then on each configured route.
      routes: routes.map((r) => ({ route: r.route, reads: r.reads, writes: r.writes, readThreshold: r.readThreshold, writeThreshold: r.writeThreshold }))
    }
  })

  // One type list, not anyOf: with type coercion, anyOf would turn a null into 0 (or a 0 into null).
  const dial = { type: ['number', 'null'], minimum: 0, maximum: 100, multipleOf: 0.01 }
  app.put<{ Body: { percent?: number, writePercent?: number | null, routes?: Record<string, number | null>, reason?: string } }>('/rollout', {
    ...change,
    schema: {
      body: {
        type: 'object',
        anyOf: [{ required: ['percent'] }, { required: ['writePercent'] }, { required: ['routes'] }],
        additionalProperties: false,
        properties: {
          percent: { type: 'number', minimum: 0, maximum: 100, multipleOf: 0.01 },
          // null deletes the dial: it follows `percent` again.
          writePercent: dial,
          routes: { type: 'object', maxProperties: 1000, additionalProperties: dial },
          reason: { type: 'string', maxLength: 512 }
        }
      }
    }
  }, async (request) => {
    const { percent, writePercent, routes, reason } = request.body
    const by = actor(authenticate(request))
    const answer: Record<string, unknown> = {}
    if (percent !== undefined) {
      const result = unwrap(await control.setPercent(percent, by, reason))
      Object.assign(answer, { percent, previous: result.previous })
    }
    if (writePercent !== undefined) {
      const result = unwrap(await control.setDial(undefined, writePercent, by, reason))
      answer.writePercent = { percent: writePercent, previous: result.previous }
    }
    for (const [name, value] of Object.entries(routes ?? {})) {
      const result = unwrap(await control.setDial(name, value, by, reason))
      answer.routes = { ...(answer.routes as object | undefined), [name]: { percent: value, previous: result.previous } }
    }
    return answer
  })

  app.post<{ Body: { reason?: string, force?: boolean } | undefined }>('/rollback', {
    ...change,
    schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 }, force: { type: 'boolean' } } } }
  }, async (request, reply) => {
    const { outcome, fence } = unwrap(await control.rollback({ reason: request.body?.reason, force: request.body?.force }, actor(authenticate(request))))
    const persisted = outcome !== 'pending'
    reply.code(persisted ? 200 : 202)
    return { state: 'rolled_back', persisted, ...(fence === undefined ? {} : { fence: fence.id }), message: persisted ? 'rolled back fleet-wide' : 'rolled back on this instance; it is written to Redis as soon as Redis is reachable' }
  })

  app.post<{ Body: { reason?: string } | undefined }>('/resume', {
    ...change,
    schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 } } } }
  }, async (request) => {
    const result = unwrap(await control.resume(actor(authenticate(request)), request.body?.reason))
    return { state: 'active', changed: result.status === 'ok' }
  })

  if (options.schedules !== undefined) await operationRoutes(app, { ...options, schedules: options.schedules, change, identity: authenticate })
}

function round (value: number): number {
  return Math.round(value * 1e4) / 1e4
}

function iso (ms: number): string | null {
  return ms === 0 ? null : new Date(ms).toISOString()
}
