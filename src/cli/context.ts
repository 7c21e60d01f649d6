import { readFileSync } from 'node:fs'
import { hostname, userInfo } from 'node:os'
import { parse as parseYaml } from 'yaml'
import { DEFAULT_CONFIG_PATH, resolveConfig, type Config } from '../config.ts'
import { ConfigError, RedisUnavailableError } from '../errors.ts'
import { pino, type Logger } from 'pino'
import type { Actor } from '../control/audit.ts'
import { RolloutControl } from '../control/commands.ts'
import { fleetRaiseGate } from '../health/gate.ts'
import { Notifier } from '../control/notify.ts'
import { liveRollouts } from '../fleet/fleet.ts'
import { RolloutKeys } from '../rollout/keys.ts'
import { connectRedis, isReady, type RedisClient } from '../rollout/redis.ts'
import { RolloutStore } from '../rollout/store.ts'
import { ScheduleStore } from '../rollout/schedule-store.ts'

/** The options every verb takes (see main.ts). */
export interface GlobalOptions {
  rollout?: string
  redis?: string
  prefix?: string
  by?: string
  json?: boolean
  /** Change a rollout even when no live instance follows it. */
  force?: boolean
}

/** What a verb works with: the resolved configuration, Redis, the stores, and how to print. */
export interface CliContext {
  config: Config
  keys: RolloutKeys
  redis: RedisClient
  store: RolloutStore
  schedules: ScheduleStore
  /** Every change goes through the command layer, as it does from the admin API. */
  control: RolloutControl
  actor: Actor
  /** --force: change a rollout no live instance follows; roll back with no way back. */
  force: boolean
  /** Warnings and failures, as JSON lines on stderr. */
  log: Logger
  json: boolean
  /** Prints the human text, or the JSON value with --json. */
  print: (human: string, json: unknown) => void
  close: () => Promise<void>
}

/** How long the command waits for Redis before it gives up (exit 1). */
const CONNECT_TIMEOUT_MS = 3_000

/**
 * The same configuration the proxy reads (file named by DBSHIFT_CONFIG, then the environment), so that `which`
 * hashes with the same salt and strategy; the pools are not needed here. --rollout and --redis win.
 */
export function cliConfig (options: GlobalOptions, env: NodeJS.ProcessEnv = process.env): Config {
  const path = env.DBSHIFT_CONFIG ?? DEFAULT_CONFIG_PATH
  let file: Record<string, unknown> = {}
  try {
    file = (parseYaml(readFileSync(path, 'utf8')) ?? {}) as Record<string, unknown>
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || env.DBSHIFT_CONFIG !== undefined) {
      throw new ConfigError(`${path}: ${(err as Error).message.split('\n')[0] ?? ''}`, { cause: err })
    }
  }
  const placeholder = ['http://127.0.0.1:1']
  const pools = (file.pools ?? {}) as Record<string, unknown>
  const merged = { ...file, pools: { legacy: pools.legacy ?? placeholder, migrated: pools.migrated ?? placeholder } }
  const overrides: NodeJS.ProcessEnv = { ...env, DBSHIFT_LEGACY: undefined, DBSHIFT_MIGRATED: undefined }
  if (options.rollout !== undefined) overrides.DBSHIFT_ROLLOUT = options.rollout
  if (options.redis !== undefined) overrides.REDIS_URL = options.redis
  const config = resolveConfig(merged, overrides)
  if (options.prefix !== undefined) config.redis.prefix = options.prefix
  return config
}

/** Who the audit trail names for a change made with this command: --by, DBSHIFT_OPERATOR, or user@host. */
export function operator (options: GlobalOptions, env: NodeJS.ProcessEnv = process.env): string {
  if (options.by !== undefined && options.by !== '') return options.by
  if (env.DBSHIFT_OPERATOR !== undefined && env.DBSHIFT_OPERATOR !== '') return env.DBSHIFT_OPERATOR
  let user = env.USER ?? 'unknown'
  try { user = userInfo().username } catch {}
  return `${user}@${hostname()}`
}

export async function openContext (options: GlobalOptions): Promise<CliContext> {
  const config = cliConfig(options)
  const redis = connectRedis(config.redis.url, { commandTimeoutMs: Math.max(config.redis.commandTimeoutMs, 2_000), connectionName: 'dbshift-cli' })
  await ready(redis, config.redis.url)
  const keys = new RolloutKeys(config.redis.prefix, config.rollout.name)
  const json = options.json === true
  const store = new RolloutStore(redis, keys, { initialPercent: config.rollout.initialPercent, routes: config.routes.map((route) => route.name) })
  const schedules = new ScheduleStore(redis, keys)
  // Only failures are worth a line on stderr (a notification that could not be delivered, with its cause).
  const log = pino({ level: 'warn', base: undefined }, process.stderr)
  const notifier = new Notifier({ ...config.notify, rollout: config.rollout.name, log })
  const control = new RolloutControl({
    redis,
    store,
    schedules,
    initialPercent: config.rollout.initialPercent,
    log,
    notifier,
    // The command reads the lag key itself, at the moment of the change: no poll interval to allow for.
    wayBack: { ...config.guards.wayBack, pollMs: 0 },
    requireFollowers: options.force === true ? undefined : async () => await liveRollouts(redis, config.redis.prefix, Date.now()),
    raiseGate: fleetRaiseGate(redis, keys)
  })
  return {
    config,
    keys,
    redis,
    store,
    schedules,
    control,
    actor: { by: operator(options), source: 'cli' },
    force: options.force === true,
    log,
    json,
    print: (human, value) => { process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${human}\n`) },
    close: async () => {
      // A notification is sent after the change is made and printed; the command waits for it (bounded) before it exits.
      await control.flush()
      await redis.quit().catch((err: unknown) => { log.debug({ err }, 'QUIT failed; disconnecting') })
      redis.disconnect()
    }
  }
}

/** Errors that retrying a moment later will not fix: the command says so at once rather than after the timeout. */
const HOPELESS = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH'])

async function ready (redis: RedisClient, url: string): Promise<void> {
  if (isReady(redis)) return
  await new Promise<void>((resolve, reject) => {
    let settled = false
    const fail = (reason: string): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      redis.disconnect()
      reject(new RedisUnavailableError(`cannot reach ${redact(url)} (${reason}); set REDIS_URL or --redis`))
    }
    const timer = setTimeout(() => fail('no answer'), CONNECT_TIMEOUT_MS)
    redis.on('error', (err: NodeJS.ErrnoException) => {
      if (HOPELESS.has(err.code ?? '')) fail(err.message)
    })
    redis.once('ready', () => {
      settled = true
      clearTimeout(timer)
      resolve()
    })
  })
}

/** The URL without its password, for messages. */
export function redact (url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@')
}
