import { readFileSync } from 'node:fs'
import { Type, type Static } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from './errors.ts'
import { DEFAULT_READ_YOUR_WRITES_MS, MIN_COOKIE_SECRET_LENGTH } from './routing/read-your-writes.ts'
import { DEFAULT_ROUTE_NAME, globProblem, REQUEST_CLASSES, ROUTE_MODES } from './routing/routes.ts'

export const DEFAULT_CONFIG_PATH = 'config/dbshift.yaml'

const HostPort = Type.String({ pattern: '^(\\[[0-9a-fA-F:.]+\\]|[^\\s:\\[\\]]+):[0-9]{1,5}$', description: 'must be host:port (an IPv6 host in brackets)' })
const Millis = (value: number, minimum = 1) => Type.Integer({ minimum, default: value })
/** A string from a fixed list; a plain JSON-schema enum so that errors list the allowed values. */
const Enum = <const T extends string>(values: readonly T[], defaultValue?: T) =>
  Type.Unsafe<T>({ type: 'string', enum: values, ...(defaultValue === undefined ? {} : { default: defaultValue }) })
const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
const Members = Type.Array(Type.String({ pattern: '^https?://[^\\s/?#]+(/[^\\s?#]*)?$', description: 'must be an http:// or https:// base URL' }), { minItems: 1 })

/** The upstream settings; a pool's own `upstream` holds any of them, without defaults, over the global ones. */
const upstreamFields = (defaults: boolean) => {
  const d = <T extends object>(options: T, value: number): T => (defaults ? { ...options, default: value } : options)
  return {
    connections: Type.Integer(d({ minimum: 1, maximum: 10_000, description: 'connections per pool member' }, 128)),
    pipelining: Type.Integer(d({ minimum: 1, maximum: 100 }, 1)),
    connectTimeoutMs: Type.Integer(d({ minimum: 1 }, 5_000)),
    headersTimeoutMs: Type.Integer(d({ minimum: 1 }, 30_000)),
    bodyTimeoutMs: Type.Integer(d({ minimum: 1 }, 30_000)),
    keepAliveTimeoutMs: Type.Integer(d({ minimum: 1 }, 4_000)),
    retries: Type.Integer(d({ minimum: 0, maximum: 10, description: 'retries of an idempotent request that failed before reaching the upstream' }, 1)),
    queueTimeoutMs: Type.Integer(d({ minimum: 1 }, 10_000))
  }
}

/** A pool in its object form; the list form `[url, …]` is read as `{ members: [url, …] }`. */
const Pool = Type.Object({
  members: Members,
  healthCheck: Type.Optional(Type.Object({
    path: Type.String({ pattern: '^/[^\\s#]*$', default: '/', description: 'must be a path starting with /' }),
    intervalMs: Millis(2_000, 100),
    timeoutMs: Millis(1_000, 10),
    unhealthyAfter: Type.Integer({ minimum: 1, maximum: 100, default: 3 }),
    healthyAfter: Type.Integer({ minimum: 1, maximum: 100, default: 2 })
  }, { additionalProperties: false })),
  outlier: Type.Object({
    consecutiveErrors: Type.Integer({ minimum: 0, maximum: 1_000, default: 5, description: 'must be an integer from 0 (no ejection) to 1000' }),
    ejectMs: Millis(30_000, 100),
    maxEjectedPercent: Type.Integer({ minimum: 0, maximum: 100, default: 10 })
  }, { additionalProperties: false, default: {} }),
  // Retries stay global: the forwarder applies one retry rule to both pools.
  upstream: Type.Optional(Type.Partial(Type.Omit(Type.Object(upstreamFields(false)), ['retries', 'queueTimeoutMs']), { additionalProperties: false }))
}, { additionalProperties: false, description: 'must be a list of base URLs or { members, healthCheck, outlier, upstream }' })

const Guard = <T extends Record<string, ReturnType<typeof Type.Integer> | ReturnType<typeof Type.Number> | ReturnType<typeof Type.Boolean>>>(fields: T) =>
  Type.Object({ enabled: Type.Boolean({ default: true }), dryRun: Type.Boolean({ default: false }), ...fields }, { additionalProperties: false, default: {} })

export const ConfigSchema = Type.Object({
  listen: Type.String({ ...HostPort, default: '0.0.0.0:8080' }),
  adminListen: Type.String({ ...HostPort, default: '127.0.0.1:9901' }),
  instanceId: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  workers: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
  rollout: Type.Object({
    name: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', default: 'default', description: 'must be 1 to 64 letters, digits, _ . or -' }),
    salt: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    strategy: Enum(['hash', 'tail'], 'hash'),
    initialPercent: Type.Number({ minimum: 0, maximum: 100, multipleOf: 0.01, default: 0 }),
    anonymous: Enum(['legacy', 'migrated'], 'legacy'),
    readYourWritesMs: Type.Integer({ minimum: 0, maximum: 600_000, default: DEFAULT_READ_YOUR_WRITES_MS, description: 'must be a whole number of milliseconds from 0 (off) to 600000' }),
    cookieSecret: Type.Optional(Type.String({ minLength: MIN_COOKIE_SECRET_LENGTH, description: `must be at least ${MIN_COOKIE_SECRET_LENGTH} characters` }))
  }, { additionalProperties: false, default: {} }),
  identity: Type.Object({
    header: Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', default: 'x-user-id', description: 'must be an HTTP header name' }),
    cookie: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', description: 'must be a cookie name' }))
  }, { additionalProperties: false, default: {} }),
  pools: Type.Object({
    legacy: Pool,
    migrated: Pool
  }, { additionalProperties: false }),
  upstream: Type.Object({ ...upstreamFields(true), preserveHost: Type.Boolean({ default: true }) }, { additionalProperties: false, default: {} }),
  tls: Type.Optional(Type.Object({
    cert: Type.String({ minLength: 1, description: 'must be the path of a PEM certificate (chain) file' }),
    key: Type.String({ minLength: 1, description: 'must be the path of a PEM private key file' })
  }, { additionalProperties: false })),
  server: Type.Object({
    requestTimeoutMs: Millis(300_000, 0),
    headersTimeoutMs: Millis(15_000),
    keepAliveTimeoutMs: Millis(72_000),
    maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1_048_576, default: 16_384 }),
    maxUrlBytes: Type.Integer({ minimum: 64, maximum: 1_048_576, default: 8_192 }),
    maxInFlight: Type.Integer({ minimum: 0, default: 10_000, description: 'requests in flight before new ones get 503; 0 = no limit' }),
    shutdownGraceMs: Millis(25_000),
    writeTimeoutMs: Millis(30_000),
    trustedProxies: Type.Array(Type.String({ minLength: 1 }), { default: [] }),
    reconnectSpreadMs: Millis(5_000, 0),
    maxUpgraded: Type.Integer({ minimum: 0, default: 10_000, description: 'open WebSockets before new handshakes get 503; 0 = no limit' })
  }, { additionalProperties: false, default: {} }),
  redis: Type.Object({
    url: Type.String({ pattern: '^(redis|rediss|redis\\+sentinel|redis\\+cluster)://', default: 'redis://127.0.0.1:6379', description: 'must be a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL' }),
    prefix: Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$', default: 'dbshift' }),
    pollIntervalMs: Millis(500, 50),
    fullSyncIntervalMs: Millis(5_000, 100),
    commandTimeoutMs: Millis(1_000, 10),
    heartbeatIntervalMs: Millis(5_000, 100)
  }, { additionalProperties: false, default: {} }),
  admin: Type.Object({
    token: Type.Optional(Type.String({ minLength: 16, description: 'must be at least 16 characters' })),
    readToken: Type.Optional(Type.String({ minLength: 16, description: 'must be at least 16 characters' })),
    tokenName: Type.String({ minLength: 1, maxLength: 64, default: 'admin' }),
    allowedHosts: Type.Array(Type.String({ pattern: '^\\.?[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*\\.?$', description: 'must be a host name, or .domain for every name under it' }), { default: [] })
  }, { additionalProperties: false, default: {} }),
  log: Type.Object({
    level: Enum(LEVELS, 'info'),
    requests: Enum(LEVELS, 'silent')
  }, { additionalProperties: false, default: {} }),
  notify: Type.Object({
    webhookUrl: Type.Optional(Type.String({ pattern: '^https?://' })),
    timeoutMs: Millis(5_000),
    retries: Type.Integer({ minimum: 0, maximum: 10, default: 3 })
  }, { additionalProperties: false, default: {} }),
  guards: Type.Object({
    signalPollIntervalMs: Millis(5_000, 100),
    l1: Guard({
      windowMs: Millis(300_000, 1_000),
      errorRate: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.05 }),
      minRequests: Type.Integer({ minimum: 1, default: 100 }),
      fastWindowMs: Millis(10_000, 1_000),
      fastErrorRate: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.5 }),
      fastMinRequests: Type.Integer({ minimum: 1, default: 20 }),
      compareWithLegacy: Type.Boolean({ default: false }),
      legacyMargin: Type.Number({ minimum: 0, maximum: 1, default: 0.02 }),
      evaluateIntervalMs: Millis(1_000, 100),
      unhealthyPoolMs: Millis(10_000, 0),
      minUsers: Type.Integer({ minimum: 1, default: 10 }),
      stuckMs: Millis(5_000, 100),
      latencyRatio: Type.Number({ minimum: 0, default: 0, description: 'migrated p99 above legacy p99 times this trips L1; 0 = off' }),
      latencyMinRequests: Type.Integer({ minimum: 1, default: 100 })
    }),
    l2: Type.Object({
      enabled: Type.Boolean({ default: true }),
      dryRun: Type.Boolean({ default: false }),
      threshold: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.8 }),
      sustainMs: Millis(180_000, 0),
      prometheusUrl: Type.Optional(Type.String({ pattern: '^https?://' })),
      pollIntervalMs: Millis(5_000, 100),
      retryAfterSeconds: Type.Integer({ minimum: 1, default: 30 }),
      featureRoutes: Type.Array(Type.String({ minLength: 1 }), { default: [] })
    }, { additionalProperties: false, default: {} }),
    l3: Type.Object({
      enabled: Type.Boolean({ default: false }),
      dryRun: Type.Boolean({ default: false }),
      sampleRate: Type.Number({ minimum: 0, maximum: 1, default: 0.01 }),
      methods: Type.Array(Enum(['GET', 'HEAD']), { default: ['GET', 'HEAD'] }),
      ignorePaths: Type.Array(Type.String(), { default: [] }),
      mismatchRate: Type.Number({ exclusiveMinimum: 0, maximum: 1, default: 0.05 }),
      minComparisons: Type.Integer({ minimum: 1, default: 50 }),
      windowMs: Millis(300_000, 1_000),
      maxBodyBytes: Type.Integer({ minimum: 1024, default: 1_048_576 }),
      maxConcurrent: Type.Integer({ minimum: 1, default: 16 }),
      timeoutMs: Millis(10_000),
      webhookUrl: Type.Optional(Type.String({ pattern: '^https?://' })),
      webhookTimeoutMs: Millis(5_000),
      webhookRetries: Type.Integer({ minimum: 0, maximum: 10, default: 3 })
    }, { additionalProperties: false, default: {} }),
    wayBack: Type.Object({
      maxLagSeconds: Type.Number({ exclusiveMinimum: 0, maximum: 86_400, default: 30 }),
      fenceTimeoutMs: Millis(30_000, 100),
      onTimeout: Enum(['release', 'hold'], 'release'),
      lagQuery: Type.Optional(Type.String({ pattern: '^https?://', description: 'must be an http:// or https:// Prometheus instant query URL' }))
    }, { additionalProperties: false, default: {} })
  }, { additionalProperties: false, default: {} }),
  routes: Type.Array(Type.Object({
    name: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'must be 1 to 64 letters, digits, _ . or -' }),
    path: Type.String({ minLength: 1, maxLength: 1024 }),
    methods: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Z]{1,32}$', description: 'must be an upper-case HTTP method' }), { minItems: 1 })),
    mode: Enum(ROUTE_MODES),
    class: Type.Optional(Enum(REQUEST_CLASSES))
  }, { additionalProperties: false }), { maxItems: 1_000, default: [] })
}, { additionalProperties: false })

export type Config = Static<typeof ConfigSchema>
/** One pool in its object form (a list of base URLs is read as `{ members }`). */
export type PoolConfig = Config['pools']['legacy']
export type UpstreamConfig = Config['upstream']

/** The environment variables of SPEC "Configuration", and the key each one overrides. */
export const ENV_KEYS = {
  DBSHIFT_LISTEN: 'listen',
  DBSHIFT_ADMIN_LISTEN: 'adminListen',
  DBSHIFT_LEGACY: 'pools.legacy',
  DBSHIFT_MIGRATED: 'pools.migrated',
  DBSHIFT_ROLLOUT: 'rollout.name',
  REDIS_URL: 'redis.url',
  DBSHIFT_ADMIN_TOKEN: 'admin.token',
  DBSHIFT_COOKIE_SECRET: 'rollout.cookieSecret'
} as const

/**
 * Other DBSHIFT_* variables that are not config keys: read by the `dbshift` command (DBSHIFT_OPERATOR), by the test
 * suite (DBSHIFT_TEST_PG_URL), or set by the workers' primary for its workers (DBSHIFT_WORKER_ADMIN_LISTEN).
 */
const OTHER_VARIABLES = ['DBSHIFT_CONFIG', 'DBSHIFT_OPERATOR', 'DBSHIFT_TEST_PG_URL', 'DBSHIFT_WORKER_ADMIN_LISTEN'] as const

/**
 * Admin tokens shipped as placeholders (the dbshift-admin-token.yaml files of deploy/, docker-compose.yml) and the words such
 * placeholders are made of: a token anyone can read in this repository is no token.
 */
export const PLACEHOLDER_TOKENS = ['replace-me-with-a-long-random-token', 'compose-demo-token-change-me'] as const
const PLACEHOLDER_WORDS = /change-?me|replace-?me|placeholder|your-?token|example-?token/i

/** Keys whose values never appear in a message, not even a short, refused one. */
const SECRET_KEYS = new Set(['admin.token', 'admin.readToken', 'rollout.cookieSecret'])

const ajv = new Ajv({ useDefaults: true, allErrors: false, strict: false, verbose: true, multipleOfPrecision: 6 })
const validate = ajv.compile(ConfigSchema)

/**
 * Builds the configuration from a parsed YAML document and the environment, applies defaults and validates
 * it once. Throws a ConfigError naming the key (and the variable it came from), the value and the rule.
 */
export function resolveConfig (file: unknown, env: NodeJS.ProcessEnv = {}): Config {
  if (file !== null && file !== undefined && (typeof file !== 'object' || Array.isArray(file))) {
    throw new ConfigError('the file must hold a YAML mapping of keys')
  }
  const raw = structuredClone((file ?? {}) as Record<string, unknown>)
  checkVariables(env)
  const fromEnv = new Map<string, string>()
  for (const [variable, key] of Object.entries(ENV_KEYS)) {
    const value = env[variable]
    if (value === undefined) continue
    const isPool = key.startsWith('pools.')
    const current = isPool ? (raw.pools as Record<string, unknown> | undefined)?.[key.slice(6)] : undefined
    const inObject = typeof current === 'object' && current !== null && !Array.isArray(current)
    setPath(raw, inObject ? `${key}.members` : key, isPool ? value.split(',').map((url) => url.trim()).filter((url) => url !== '') : value)
    fromEnv.set(key, variable)
  }
  const listPools = normalizePools(raw)
  if (!validate(raw)) throw new ConfigError(describe(validate.errors?.[0], raw, fromEnv, listPools))
  const config = raw as unknown as Config
  for (const key of ['listen', 'adminListen'] as const) {
    if (parseHostPort(config[key]).port > 65_535) {
      throw new ConfigError(`${key} = "${config[key]}": the port must be 0 to 65535`)
    }
  }
  const token = config.admin.token
  if (token !== undefined && ((PLACEHOLDER_TOKENS as readonly string[]).includes(token) || PLACEHOLDER_WORDS.test(token))) {
    const source = fromEnv.has('admin.token') ? 'admin.token (from DBSHIFT_ADMIN_TOKEN)' : 'admin.token'
    throw new ConfigError(`${source}: is a placeholder, not a secret; set a long random token (for example: openssl rand -hex 24)`)
  }
  config.rollout.salt ??= config.rollout.name
  checkRoutes(config)
  return config
}

/** An unknown DBSHIFT_* variable (a typo) and an empty one are refused like an unknown or a bad key. */
function checkVariables (env: NodeJS.ProcessEnv): void {
  const known = new Set<string>([...Object.keys(ENV_KEYS), ...OTHER_VARIABLES])
  for (const [variable, value] of Object.entries(env)) {
    if (variable.startsWith('DBSHIFT_') && !known.has(variable)) {
      throw new ConfigError(`${variable}: unknown variable (allowed: ${[...Object.keys(ENV_KEYS), ...OTHER_VARIABLES].join(', ')})`)
    }
    if (value === '' && (known.has(variable) || variable in ENV_KEYS)) {
      const key = ENV_KEYS[variable as keyof typeof ENV_KEYS] as string | undefined
      throw new ConfigError(`${key === undefined ? variable : `${key} (from ${variable})`} = "": must not be empty; unset the variable instead`)
    }
  }
}

/** The config file a process reads: DBSHIFT_CONFIG, or the default path. */
export function configPath (env: NodeJS.ProcessEnv = process.env): string {
  return env.DBSHIFT_CONFIG ?? DEFAULT_CONFIG_PATH
}

/** What the schema cannot say about `routes`: names are unique (and not `default`), paths are usable globs. */
function checkRoutes (config: Config): void {
  const seen = new Set<string>()
  config.routes.forEach((route, i) => {
    if (route.name === DEFAULT_ROUTE_NAME) throw new ConfigError(`routes.${i}.name = "${route.name}": must not be "${DEFAULT_ROUTE_NAME}" (the name of requests that match no route)`)
    if (seen.has(route.name)) throw new ConfigError(`routes.${i}.name = "${route.name}": must be unique (an earlier route has it)`)
    seen.add(route.name)
    const problem = globProblem(route.path)
    if (problem !== undefined) throw new ConfigError(`routes.${i}.path = ${JSON.stringify(route.path)}: ${problem}`)
  })
}

/** Reads, parses and validates the config file named by DBSHIFT_CONFIG (or the default path). */

export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const path = configPath(env)
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && env.DBSHIFT_CONFIG === undefined) text = ''
    else throw new ConfigError(`DBSHIFT_CONFIG = "${path}": the file cannot be read (${(err as Error).message})`, { cause: err })
  }
  let parsed: unknown
  try {
    parsed = parseYaml(text, { logLevel: 'error' }) // problems are reported here, once, not printed by the parser
  } catch (err) {
    throw new ConfigError(`${path}: not valid YAML (${(err as Error).message.split('\n')[0]})`, { cause: err })
  }
  return resolveConfig(parsed, env)
}

/** Reads each pool written as a list of base URLs as `{ members: [...] }`; returns the names of those pools. */
function normalizePools (raw: Record<string, unknown>): Set<string> {
  const lists = new Set<string>()
  const pools = raw.pools
  if (typeof pools !== 'object' || pools === null) return lists
  for (const [name, pool] of Object.entries(pools as Record<string, unknown>)) {
    if (!Array.isArray(pool)) continue
    (pools as Record<string, unknown>)[name] = { members: pool }
    lists.add(name)
  }
  return lists
}

function describe (error: ErrorObject | undefined, raw: Record<string, unknown>, fromEnv: Map<string, string>, listPools: Set<string>): string {
  if (error === undefined) return 'unknown validation error'
  const path = error.instancePath.split('/').slice(1)
  if (error.keyword === 'required') path.push(String(error.params.missingProperty))
  const found = path.reduce<unknown>((node, part) => (node as Record<string, unknown> | undefined)?.[part], raw)
  // A pool written as a list is named as the user wrote it: pools.legacy.0, not pools.legacy.members.0.
  if (path[0] === 'pools' && listPools.has(path[1] ?? '') && path[2] === 'members') path.splice(2, 1)
  if (error.keyword === 'additionalProperties') {
    path.push(String(error.params.additionalProperty))
    return `${path.join('.')}: unknown key (allowed: ${allowedKeys(error.parentSchema).join(', ')})`
  }
  const key = path.join('.') || '(root)'
  const envKey = [...fromEnv.keys()].find((k) => key === k || key.startsWith(`${k}.`))
  const source = envKey === undefined ? key : `${key} (from ${fromEnv.get(envKey) ?? ''})`
  if (error.keyword === 'required') return `${source}: is required`
  // A secret is never echoed, not even a wrong one.
  const value = found
  const shown = SECRET_KEYS.has(key) ? (typeof value === 'string' ? `(${value.length} characters, not shown)` : '…') : JSON.stringify(value)
  const description = (error.parentSchema as { description?: string } | undefined)?.description
  const rule = description?.startsWith('must') === true ? description : undefined
  const allowed = error.keyword === 'enum' ? `must be one of ${(error.params.allowedValues as string[]).join(', ')}` : undefined
  return `${source} = ${shown}: ${allowed ?? rule ?? error.message ?? 'invalid'}`
}

function allowedKeys (schema: unknown): string[] {
  return Object.keys((schema as { properties?: object } | undefined)?.properties ?? {})
}

function setPath (target: Record<string, unknown>, dotted: string, value: unknown): void {
  const parts = dotted.split('.')
  let node = target
  for (const part of parts.slice(0, -1)) {
    const next = node[part]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[part] = {}
    node = node[part] as Record<string, unknown>
  }
  node[parts[parts.length - 1] as string] = value
}

/** Splits `host:port` (IPv6 hosts in brackets) for server.listen. */
export function parseHostPort (value: string): { host: string, port: number } {
  const colon = value.lastIndexOf(':')
  const host = value.slice(0, colon).replace(/^\[(.*)\]$/, '$1')
  return { host, port: Number(value.slice(colon + 1)) }
}
