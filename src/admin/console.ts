import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { pathToFileURL } from 'node:url'
import type { FastifyInstance } from 'fastify'
import type { Logger } from 'pino'
import { every, type Periodic } from '../background.ts'
import type { Config } from '../config.ts'
import { UnauthorizedError } from '../errors.ts'
import type { Guards } from '../guards/index.ts'
import type { Metrics } from '../metrics.ts'
import type { RolloutKeys } from '../rollout/keys.ts'
import { isReady, type RedisClient } from '../rollout/redis.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { TrafficWindow } from '../traffic/window.ts'
import { readAccess } from './auth.ts'
import { explainGuards } from './console/explain.ts'
import { History } from './console/history.ts'

export interface ConsoleOptions {
  config: Config
  metrics: Metrics
  traffic: TrafficWindow
  guards: Guards
  sync: RolloutSync
  redis: RedisClient
  keys: RolloutKeys
  now: () => number
  /** Width of one point of the console's history (default 10 s). */
  sampleMs?: number
}

/** The page and its files: read once at start-up, served from memory. Nothing else is served under /console/assets. */
const PAGE_DIR = new URL('./console/page/', import.meta.url)
const ASSETS: Record<string, { file: URL, type: string }> = {
  'app.js': { file: new URL('app.js', PAGE_DIR), type: 'text/javascript; charset=utf-8' },
  'style.css': { file: new URL('style.css', PAGE_DIR), type: 'text/css; charset=utf-8' },
  'uPlot.min.js': { file: moduleFile('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  'uPlot.min.css': { file: moduleFile('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' }
}

/** Reads that stay open with admin.readToken set: the page itself (it asks for the token) and the probes. */
const OPEN_READS = new Set(['/', '/console/assets/:file', '/healthz', '/readyz'])

// The page loads only its own files and talks only to this port; a token typed into it never goes anywhere else.
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache'
}

/**
 * The operator console on the admin port: `GET /` (the page), its files, and two reads made for it (the guards
 * explained with the pools; an hour of per-version history). Every change the page makes goes through the admin
 * API's own routes with the admin token. Registered before the other admin routes and without encapsulation, so that
 * its read check (admin.readToken) covers every admin read.
 */
async function consoleRoutes (app: FastifyInstance, options: ConsoleOptions): Promise<void> {
  const { config, guards, sync, now } = options
  const canRead = readAccess(config.admin.readToken, config.admin.token)
  if (canRead !== undefined) {
    app.addHook('onRequest', async (request, reply) => {
      if (request.method !== 'GET' && request.method !== 'HEAD') return
      // The route matched, not the raw path: no spelling of a URL reaches another route through an open one.
      const route = request.routeOptions.url
      if ((route !== undefined && OPEN_READS.has(route)) || canRead(request)) return
      const error = new UnauthorizedError()
      await reply.code(401).header('www-authenticate', 'Bearer').send({ error: error.code, message: `${error.message} to read from this admin port (admin.readToken or the admin token)` })
    })
  }

  const files = new Map<string, { body: Buffer, type: string }>()
  for (const [name, asset] of Object.entries(ASSETS)) files.set(name, { body: await readFile(asset.file), type: asset.type })
  const page = await readFile(new URL('index.html', PAGE_DIR))

  app.get('/', async (_request, reply) => {
    reply.headers({ ...PAGE_HEADERS, 'content-type': 'text/html; charset=utf-8' })
    return page
  })

  app.get<{ Params: { file: string } }>('/console/assets/:file', async (request, reply) => {
    const file = files.get(request.params.file)
    if (file === undefined) return await reply.code(404).send({ error: 'DBSHIFT_ERR_BAD_REQUEST', message: `no console file ${request.params.file}` })
    reply.headers({ 'content-type': file.type, 'x-content-type-options': 'nosniff', 'cache-control': 'no-cache' })
    return file.body
  })

  app.get('/console/overview', async () => ({
    guards: explainGuards(config.guards, guards.status(), sync.current),
    // The freeze as Redis holds it (why raises are refused); null when there is none, absent while Redis is away.
    freeze: isReady(options.redis) ? await options.redis.get(options.keys.freeze).catch(() => undefined) : undefined,
    pools: { legacy: poolMembers(config.pools.legacy), migrated: poolMembers(config.pools.migrated) }
  }))

  const history = new History({ traffic: options.traffic, duration: options.metrics.duration, now, sampleMs: options.sampleMs })
  let sampling: Periodic | undefined
  app.addHook('onReady', async () => {
    sampling = every('console history', async () => { await history.sample() }, {
      intervalMs: history.sampleMs,
      immediately: true,
      onError: (err) => { app.log.warn({ err }, 'the console history could not take a sample') },
      log: app.log as Logger
    })
  })
  app.addHook('onClose', async () => { await sampling?.stop() })

  app.get('/console/history', async () => ({
    sampleMs: history.sampleMs,
    spanMs: history.spanMs,
    thresholds: {
      errorRate: config.guards.l1.enabled ? config.guards.l1.errorRate : null,
      // Below this rate the L1 window cannot hold its minimum sample: the guard cannot judge.
      minRequestsPerSecond: config.guards.l1.enabled ? config.guards.l1.minRequests / (config.guards.l1.windowMs / 1000) : null
    },
    points: await history.points()
  }))
}

// Its hooks and routes belong to the admin server itself, not to an encapsulated child (fastify-plugin's marker).
Object.assign(consoleRoutes, { [Symbol.for('skip-override')]: true })
export { consoleRoutes }

function moduleFile (specifier: string): URL {
  return pathToFileURL(createRequire(import.meta.url).resolve(specifier))
}

/** A pool's members as configured (a list of base URLs, or `{ members }`), without any credentials in them. */
function poolMembers (pool: unknown): string[] {
  const members = Array.isArray(pool) ? pool : (pool as { members?: unknown } | undefined)?.members
  if (!Array.isArray(members)) return []
  return members.map((member) => {
    const text = typeof member === 'string' ? member : String((member as { url?: unknown }).url ?? '')
    try {
      const url = new URL(text)
      url.username = ''
      url.password = ''
      url.search = ''
      return url.href
    } catch {
      return text
    }
  })
}
