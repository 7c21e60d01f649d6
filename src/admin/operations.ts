import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { Actor } from '../control/audit.ts'
import { unwrap } from '../control/results.ts'
import { InvalidValueError, RedisUnavailableError } from '../errors.ts'
import { readFleet } from '../fleet/fleet.ts'
import { isReady } from '../rollout/redis.ts'
import { describeProgress, parseSteps } from '../rollout/schedule.ts'
import type { ScheduleStore } from '../rollout/schedule-store.ts'
import type { AdminOptions } from './options.ts'

interface OperationOptions extends AdminOptions {
  schedules: ScheduleStore
  /** Spread into a change route: refuses it (before its body is read) without the right bearer token. */
  change: { onRequest: onRequestHookHandler }
  identity: (request: FastifyRequest) => string
}

const reasonBody = { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 } } }

/** The fleet view, the audit trail, the override sets and the ramp schedule: what `dbshift` does, over HTTP. */
export async function operationRoutes (app: FastifyInstance, options: OperationOptions): Promise<void> {
  const { store, control, schedules, redis, change, identity, now } = options
  const actor = (request: FastifyRequest): Actor => ({ by: identity(request), source: 'api' })
  const needRedis = (what: string): void => {
    if (!isReady(redis)) throw new RedisUnavailableError(`${what} needs Redis; try again when it is back`)
  }

  app.get('/fleet', async () => {
    needRedis('the fleet view')
    const shared = await store.read()
    const instances = await readFleet(redis, store.keys, shared, now())
    return { percent: shared.percent, state: shared.state, instances, behind: instances.filter((m) => m.behind !== null).length }
  })

  app.get<{ Querystring: { count?: string } }>('/audit', {
    schema: { querystring: { type: 'object', additionalProperties: false, properties: { count: { type: 'string', pattern: '^(?:[1-9][0-9]{0,3}|10000)$' } } } }
  }, async (request) => {
    needRedis('the audit trail')
    const entries = await store.audit(Number(request.query.count ?? 20))
    return { entries: entries.map((entry) => ({ id: entry.id, ...entry.fields })) }
  })

  for (const set of ['allow', 'deny'] as const) {
    app.get(`/${set}`, async () => {
      needRedis(`the ${set}-set`)
      return { set, users: await store.listMembers(set) }
    })
    for (const [method, op] of [['PUT', 'add'], ['DELETE', 'rm']] as const) {
      // The key's rules (1 to 256 bytes) are the command layer's: a bad one is a 400 like any bad value.
      app.route<{ Params: { user: string } }>({
        method,
        url: `/${set}/:user`,
        ...change,
        handler: async (request) => {
          const result = unwrap(await control.changeMember(set, op, request.params.user, actor(request)))
          return { set, user: result.user, changed: result.status === 'ok' }
        }
      })
    }
  }

  app.get('/schedule', async () => {
    needRedis('the ramp schedule')
    const { schedule } = await schedules.read()
    return { schedule: schedule === undefined ? null : { ...schedule, progress: describeProgress(schedule, now()) } }
  })

  app.post<{ Body: { steps: Array<number | string>, bake?: string } }>('/schedule', {
    ...change,
    schema: {
      body: {
        type: 'object',
        required: ['steps'],
        additionalProperties: false,
        properties: { steps: { type: 'array', minItems: 1, maxItems: 100, items: { anyOf: [{ type: 'number' }, { type: 'string', maxLength: 32 }] } }, bake: { type: 'string', maxLength: 32 } }
      }
    }
  }, async (request, reply) => {
    const steps = parseSteps(request.body.steps.map(String), request.body.bake ?? '30m')
    if (typeof steps === 'string') throw new InvalidValueError(steps)
    const { schedule } = unwrap(await control.startRamp(steps, actor(request)))
    reply.code(201)
    return { schedule: { ...schedule, progress: describeProgress(schedule, now()) } }
  })

  for (const verb of ['pause', 'continue', 'abort'] as const) {
    app.post<{ Body: { reason?: string } | undefined }>(`/schedule/${verb}`, { ...change, schema: { body: reasonBody } }, async (request) => {
      const { schedule } = unwrap(await control.controlRamp(verb, actor(request), request.body?.reason ?? ''))
      return { schedule: { ...schedule, progress: describeProgress(schedule, now()) } }
    })
  }
}
