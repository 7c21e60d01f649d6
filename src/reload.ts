import { readFileSync } from 'node:fs'
import type { FastifyInstance, onRequestHookHandler } from 'fastify'
import type { Logger, LevelWithSilent } from 'pino'
import type { Config } from './config.ts'
import { ConfigError } from './errors.ts'
import type { Metrics } from './metrics.ts'
import { createPools, closePools, type Pools } from './proxy/pools.ts'
import type { PoolHealth } from './health/pool-health.ts'
import type { RolloutStore } from './rollout/store.ts'
import { RouteTable } from './routing/routes.ts'
import { VERSIONS } from './routing/decide.ts'

/** Keys that cannot change while running (SPEC "Pool health and live configuration"): refused by name. */
export const FIXED_KEYS = ['listen', 'adminListen', 'rollout.name', 'rollout.salt', 'rollout.strategy'] as const

/**
 * Guard keys a reload applies in place: the guards read them at each evaluation. Other guard keys shape what a
 * guard builds at start (its windows, its compiled routes, whether it runs at all) and need a restart.
 */
export const LIVE_GUARD_KEYS = {
  l1: ['errorRate', 'minRequests', 'fastErrorRate', 'fastMinRequests', 'legacyMargin', 'dryRun', 'unhealthyPoolMs'],
  l2: ['threshold', 'sustainMs', 'retryAfterSeconds'],
  l3: ['sampleRate', 'mismatchRate', 'minComparisons', 'webhookUrl', 'webhookTimeoutMs', 'webhookRetries', 'dryRun']
} as const

/**
 * Whether a changed key is applied by a reload: the pools, the upstream settings, the routes (with their modes and
 * classes), the read-your-writes window, live guard keys, the log level, TLS files.
 */
function isLive (key: string): boolean {
  // upstream.queueTimeoutMs sets how often the forwarder sweeps its waiting requests: it needs a restart.
  if (key.startsWith('pools.') || (key.startsWith('upstream.') && key !== 'upstream.queueTimeoutMs')) return true
  if (key === 'routes' || key === 'rollout.readYourWritesMs') return true
  if (key === 'log.level' || key === 'tls.cert' || key === 'tls.key') return true
  const [section, level, name] = key.split('.')
  if (section !== 'guards' || name === undefined || !(level in LIVE_GUARD_KEYS)) return false
  return (LIVE_GUARD_KEYS[level as keyof typeof LIVE_GUARD_KEYS] as readonly string[]).includes(name)
}

export interface ReloadParts {
  /** The configuration in force; a reload changes it in place, so every reader sees the new values. */
  config: Config
  pools: Pools
  poolHealth: PoolHealth
  /** The one route table requests are matched against (the forwarder, the admin `/which`); replaced in place. */
  routes: RouteTable
  /** Reads each route's dial: told the new route names. */
  store: RolloutStore
  /** Re-reads the rollout (the dials of new routes) in the background. */
  refresh: () => Promise<void>
  /** Sets the read-your-writes window (0: off) where the forwarder reads it. */
  setReadYourWrites: (windowMs: number) => void
  /** How request headers are rewritten (the forwarder and the WebSocket handshake read it per request). */
  headers?: { preserveHost: boolean }
  /** The pools changed: the parts that keep pools of their own (the L3 shadow requests) follow. */
  onPools?: (config: Config) => void
  metrics: Metrics
  log: Logger
  now: () => number
  /** Swaps the proxy port's certificate (HTTPS only). */
  setSecureContext?: (context: { cert: Buffer, key: Buffer }) => void
}

export type ReloadResult = { ok: true, changed: string[] } | { ok: false, error: string }

/**
 * Re-reads the configuration (`load` reads the file and the environment and validates the whole, as at start) and
 * applies it without dropping a request: new requests go to the new pools at once, requests in flight finish on
 * the old ones, which are closed once drained. A configuration that is invalid, or that changes a key that cannot
 * change while running, is refused whole: the running one stays, one line names the key, and
 * dbshift_config_reload_failures_total counts it.
 */
export async function reload (parts: ReloadParts, load: () => Config): Promise<ReloadResult> {
  const { config, log, metrics } = parts
  let next: Config
  let changed: string[]
  let tls: { cert: Buffer, key: Buffer } | undefined
  let routes: RouteTable | undefined
  try {
    next = load()
    changed = changedKeys(config, next)
    const fixed = FIXED_KEYS.filter((key) => changed.includes(key))
    if (fixed.length > 0) throw new ConfigError(`${fixed.join(', ')}: cannot change while running; restart to change ${fixed.length === 1 ? 'it' : 'them'}`)
    if ((config.tls === undefined) !== (next.tls === undefined)) throw new ConfigError('tls: turning TLS on or off needs a restart')
    const restart = changed.filter((key) => !isLive(key))
    if (restart.length > 0) throw new ConfigError(`${restart.join(', ')}: a reload does not apply ${restart.length === 1 ? 'this key' : 'these keys'}; restart to change ${restart.length === 1 ? 'it' : 'them'}`)
    if (next.tls !== undefined && changed.some((key) => key.startsWith('tls.'))) tls = readTls(next.tls)
    if (changed.includes('routes')) routes = new RouteTable(next.routes) // compiled before anything is swapped
  } catch (err) {
    const message = (err as Error).message
    metrics.configReloadFailures.inc()
    log.error({ err: { message, code: (err as { code?: string }).code } }, `reload refused, the running configuration is kept: ${message}`)
    return { ok: false, error: message }
  }
  if (changed.length === 0) {
    log.info('reload: the configuration has not changed')
    return { ok: true, changed }
  }

  if (changed.some((key) => key.startsWith('pools.') || key.startsWith('upstream.'))) {
    const fresh = createPools(next, { now: parts.now, onChange: parts.poolHealth.onChange, previous: parts.poolHealth.snapshot() })
    const old = { ...parts.pools }
    for (const version of VERSIONS) parts.pools[version] = fresh[version] // the forwarder reads this record per request
    parts.poolHealth.attach(parts.pools, old)
    config.pools = next.pools
    config.upstream = next.upstream
    if (parts.headers !== undefined) parts.headers.preserveHost = next.upstream.preserveHost
    // Requests in flight hold the old pool; each old dispatcher closes once its last answer is done.
    closePools(old).catch((err: unknown) => { log.warn({ err }, 'closing the pools a reload replaced failed') })
    parts.onPools?.(config)
  }
  if (routes !== undefined) {
    // In one synchronous step, between two requests: the table, the metric's route names, the dials read.
    parts.routes.replace(routes)
    metrics.setRoutes(next.routes.map((route) => route.name))
    parts.store.setRoutes(next.routes.map((route) => route.name))
    config.routes = next.routes
    parts.refresh().catch((err: unknown) => { log.warn({ err }, 'reading the dials of the reloaded routes failed; the next poll reads them') })
  }
  if (next.rollout.readYourWritesMs !== config.rollout.readYourWritesMs) {
    parts.setReadYourWrites(next.rollout.readYourWritesMs)
    config.rollout.readYourWritesMs = next.rollout.readYourWritesMs
  }
  for (const level of ['l1', 'l2', 'l3'] as const) {
    const rules = config.guards[level] as Record<string, unknown>
    for (const name of LIVE_GUARD_KEYS[level]) rules[name] = (next.guards[level] as Record<string, unknown>)[name]
  }
  for (const level of ['L1', 'L2', 'L3'] as const) {
    const guard = config.guards[level.toLowerCase() as 'l1' | 'l2' | 'l3']
    const threshold = level === 'L1' ? config.guards.l1.errorRate : level === 'L2' ? config.guards.l2.threshold : config.guards.l3.mismatchRate
    metrics.guardThreshold.labels(level).set(guard.enabled ? threshold : 0)
  }
  if (next.log.level !== config.log.level) {
    config.log.level = next.log.level
    log.level = next.log.level as LevelWithSilent
  }
  if (tls !== undefined && next.tls !== undefined) {
    parts.setSecureContext?.(tls)
    config.tls = next.tls
  }
  log.info({ changed }, `configuration reloaded: ${changed.join(', ')}`)
  return { ok: true, changed }
}

/** Reads the certificate and key files; a file that cannot be read is a bad configuration naming its key. */
export function readTls (tls: NonNullable<Config['tls']>): { cert: Buffer, key: Buffer } {
  const read = (key: 'cert' | 'key'): Buffer => {
    try {
      return readFileSync(tls[key])
    } catch (err) {
      throw new ConfigError(`tls.${key} = "${tls[key]}": the file cannot be read (${(err as Error).message})`, { cause: err })
    }
  }
  return { cert: read('cert'), key: read('key') }
}

/** The dotted keys whose values differ (lists compared whole, so a pool's members are one key). */
export function changedKeys (before: unknown, after: unknown, prefix = ''): string[] {
  const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value)
  if (!isObject(before) || !isObject(after)) return JSON.stringify(before) === JSON.stringify(after) ? [] : [prefix]
  const keys = new Set([...Object.keys(before), ...Object.keys(after)])
  return [...keys].flatMap((key) => changedKeys(before[key], after[key], prefix === '' ? key : `${prefix}.${key}`))
}

/** `POST /reload` on the admin port, with the admin token: the same reload as SIGHUP; 200 when applied, 400 when refused. */
export function reloadRoute (admin: FastifyInstance, options: { change: { onRequest: onRequestHookHandler }, reload: () => Promise<ReloadResult> }): void {
  admin.post('/reload', { ...options.change }, async (_request, reply) => {
    const result = await options.reload()
    if (result.ok) return { reloaded: true, changed: result.changed }
    reply.code(400)
    return { error: 'DBSHIFT_ERR_CONFIG', message: result.error }
  })
}
