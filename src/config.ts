import { readFileSync } from 'node:fs'
import { Type, type Static } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import { parse as parseYaml } from 'yaml'
import { ConfigError } from './errors.ts'

export const DEFAULT_CONFIG_PATH = 'config/dbshift.yaml'

const HostPort = Type.String({ pattern: '^(\\[[0-9a-fA-F:.]+\\]|[^\\s:\\[\\]]+):[0-9]{1,5}$', description: 'must be host:port (an IPv6 host in brackets)' })
const Millis = (value: number, minimum = 1) => Type.Integer({ minimum, default: value })
/** A string from a fixed list; a plain JSON-schema enum so that errors list the allowed values. */
const Enum = <const T extends string>(values: readonly T[], defaultValue?: T) =>
  Type.Unsafe<T>({ type: 'string', enum: values, ...(defaultValue === undefined ? {} : { default: defaultValue }) })
const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
const Pool = Type.Array(Type.String({ pattern: '^https?://[^\\s/?#]+(/[^\\s?#]*)?$', description: 'must be an http:// or https:// base URL' }), { minItems: 1 })

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
    anonymous: Enum(['legacy', 'migrated'], 'legacy')
  }, { additionalProperties: false, default: {} }),
  identity: Type.Object({
    header: Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', default: 'x-user-id', description: 'must be an HTTP header name' }),
    cookie: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9!#$%&\'*+.^_`|~-]+$', description: 'must be a cookie name' }))
  }, { additionalProperties: false, default: {} }),
  pools: Type.Object({
    legacy: Pool,
    migrated: Pool
  }, { additionalProperties: false }),
  upstream: Type.Object({
    connections: Type.Integer({ minimum: 1, maximum: 10_000, default: 128, description: 'connections per pool member' }),
    pipelining: Type.Integer({ minimum: 1, maximum: 100, default: 1 }),
    connectTimeoutMs: Millis(5_000),
    headersTimeoutMs: Millis(30_000),
    bodyTimeoutMs: Millis(30_000),
    keepAliveTimeoutMs: Millis(4_000),
    retries: Type.Integer({ minimum: 0, maximum: 10, default: 1, description: 'retries of an idempotent request that failed before reaching the upstream' })
  }, { additionalProperties: false, default: {} }),
  server: Type.Object({
    requestTimeoutMs: Millis(300_000, 0),
    headersTimeoutMs: Millis(15_000),
    keepAliveTimeoutMs: Millis(72_000),
    maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1_048_576, default: 16_384 }),
    maxUrlBytes: Type.Integer({ minimum: 64, maximum: 1_048_576, default: 8_192 }),
    maxInFlight: Type.Integer({ minimum: 0, default: 10_000, description: 'requests in flight before new ones get 503; 0 = no limit' }),
    shutdownGraceMs: Millis(25_000)
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
    tokenName: Type.String({ minLength: 1, maxLength: 64, default: 'admin' })
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
      evaluateIntervalMs: Millis(1_000, 100)
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
  }, { additionalProperties: false, default: {} })
}, { additionalProperties: false })

export type Config = Static<typeof ConfigSchema>

/** The environment variables of SPEC "Configuration", and the key each one overrides. */
export const ENV_KEYS = {
  DBSHIFT_LISTEN: 'listen',
  DBSHIFT_ADMIN_LISTEN: 'adminListen',
  DBSHIFT_LEGACY: 'pools.legacy',
  DBSHIFT_MIGRATED: 'pools.migrated',
  DBSHIFT_ROLLOUT: 'rollout.name',
  REDIS_URL: 'redis.url',
  DBSHIFT_ADMIN_TOKEN: 'admin.token'
} as const

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
  const fromEnv = new Map<string, string>()
  for (const [variable, key] of Object.entries(ENV_KEYS)) {
    const value = env[variable]
    if (value === undefined || value === '') continue
    const isPool = key.startsWith('pools.')
    setPath(raw, key, isPool ? value.split(',').map((url) => url.trim()).filter((url) => url !== '') : value)
    fromEnv.set(key, variable)
  }
  if (!validate(raw)) throw new ConfigError(describe(validate.errors?.[0], raw, fromEnv))
  const config = raw as unknown as Config
  for (const key of ['listen', 'adminListen'] as const) {
    if (parseHostPort(config[key]).port > 65_535) {
      throw new ConfigError(`${key} = "${config[key]}": the port must be 0 to 65535`)
    }
  }
  config.rollout.salt ??= config.rollout.name
  return config
}

/** Reads, parses and validates the config file named by DBSHIFT_CONFIG (or the default path). */
export function loadConfig (env: NodeJS.ProcessEnv = process.env): Config {
  const path = env.DBSHIFT_CONFIG ?? DEFAULT_CONFIG_PATH
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

function describe (error: ErrorObject | undefined, raw: Record<string, unknown>, fromEnv: Map<string, string>): string {
  if (error === undefined) return 'unknown validation error'
  const path = error.instancePath.split('/').slice(1)
  if (error.keyword === 'required') path.push(String(error.params.missingProperty))
  if (error.keyword === 'additionalProperties') {
    path.push(String(error.params.additionalProperty))
    return `${path.join('.')}: unknown key (allowed: ${allowedKeys(error.parentSchema).join(', ')})`
  }
  const key = path.join('.') || '(root)'
  const envKey = [...fromEnv.keys()].find((k) => key === k || key.startsWith(`${k}.`))
  const source = envKey === undefined ? key : `${key} (from ${fromEnv.get(envKey) ?? ''})`
  if (error.keyword === 'required') return `${source}: is required`
  const value = path.reduce<unknown>((node, part) => (node as Record<string, unknown> | undefined)?.[part], raw)
  const description = (error.parentSchema as { description?: string } | undefined)?.description
  const rule = description?.startsWith('must') === true ? description : undefined
  const allowed = error.keyword === 'enum' ? `must be one of ${(error.params.allowedValues as string[]).join(', ')}` : undefined
  return `${source} = ${JSON.stringify(value)}: ${allowed ?? rule ?? error.message ?? 'invalid'}`
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
