import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import { ConflictError, InvalidValueError, RedisUnavailableError } from '../errors.ts'
import { readFleet, type SharedDial } from '../fleet/fleet.ts'
import { MAX_KEY_BYTES } from '../routing/user-key.ts'
import { isReady } from '../rollout/redis.ts'
import type { Actor } from '../rollout/store.ts'
import { describeProgress, parseSteps } from '../schedule/schedule.ts'
import type { ScheduleStore } from '../schedule/store.ts'
import type { AdminOptions } from './routes.ts'

interface OperationOptions extends AdminOptions {
  schedules: ScheduleStore
  /** Spread into a change route: refuses it (before its body is read) without the right bearer token. */
  change: { onRequest: onRequestHookHandler }
  identity: (request: FastifyRequest) => string
}

const reasonBody = { type: ['object', 'null'], additionalProperties: false, properties: { reason: { type: 'string', maxLength: 512 } } }
const userParams = { type: 'object', properties: { user: { type: 'string', minLength: 1, maxLength: MAX_KEY_BYTES } } }

/** The fleet view, the audit trail, the override sets and the ramp schedule: what `dbshift` does, over HTTP. */
export async function operationRoutes (app: FastifyInstance, options: OperationOptions): Promise<void> {
  const { config, store, schedules, redis, change, identity, now } = options
  const actor = (request: FastifyRequest): Actor => ({ by: identity(request), source: 'api' })
  const needRedis = (what: string): void => {
    if (!isReady(redis)) throw new RedisUnavailableError(`${what} needs Redis; try again when it is back`)
  }
  const shared = async (): Promise<{ percent: number, state: string, dial: SharedDial }> => {
    const { record, invalid } = await store.read()
    const percent = record.percent ?? config.rollout.initialPercent
    const state = record.state ?? 'active'
    const bad = new Set(invalid.map((value) => value.key))
    return { percent, state, dial: { percent: bad.has(store.keys.percent) ? undefined : percent, state: bad.has(store.keys.state) ? undefined : state } }
  }

  app.get('/fleet', async () => {
    needRedis('the fleet view')
    const { percent, state, dial } = await shared()
    const instances = await readFleet(redis, store.keys, dial, now())
    return { percent, state, instances, behind: instances.filter((m) => m.behind !== null).length }
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
    app.put<{ Params: { user: string } }>(`/${set}/:user`, { ...change, schema: { params: userParams } }, async (request) => {
      needRedis(`changing the ${set}-set`)
      return { set, user: request.params.user, changed: await store.changeMember(set, 'add', request.params.user, actor(request)) }
    })
    app.delete<{ Params: { user: string } }>(`/${set}/:user`, { ...change, schema: { params: userParams } }, async (request) => {
      needRedis(`changing the ${set}-set`)
      return { set, user: request.params.user, changed: await store.changeMember(set, 'rm', request.params.user, actor(request)) }
    })
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
    needRedis('starting a ramp schedule')
    const state = await shared()
    if (state.state === 'rolled_back') throw new ConflictError('the rollout is rolled back: resume it before starting a ramp')
    if ((steps.at(-1)?.percent ?? 0) <= state.percent) throw new ConflictError(`the dial is already at ${state.percent}%, at or above every step`)
    const { result, schedule } = await schedules.start(steps, actor(request))
    if (result !== 'ok') throw new ConflictError(`a ramp schedule is already active (${describeProgress(schedule, now())}); abort it first`)
    reply.code(201)
    return { schedule: { ...schedule, progress: describeProgress(schedule, now()) } }
  })

  for (const verb of ['pause', 'continue', 'abort'] as const) {
    app.post<{ Body: { reason?: string } | undefined }>(`/schedule/${verb}`, { ...change, schema: { body: reasonBody } }, async (request) => {
      needRedis(`${verb === 'continue' ? 'continuing' : verb === 'pause' ? 'pausing' : 'aborting'} the ramp schedule`)
      const state = verb === 'continue' ? await shared() : undefined
      if (state?.state === 'rolled_back') throw new ConflictError('the rollout is rolled back: resume it first')
      const schedule = await schedules.control(verb, actor(request), request.body?.reason ?? '', state?.percent)
      if (schedule === undefined) throw new ConflictError('no ramp schedule is active')
      return { schedule: { ...schedule, progress: describeProgress(schedule, now()) } }
    })
  }
}
