import { readFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import closeWithGrace from 'close-with-grace'
import { buildApp, type App, type AppDeps } from './app.ts'
import { startWorkersOr } from './cluster.ts'
import { configPath, loadConfig, parseHostPort, type Config } from './config.ts'
import { createLogger, routeConsoleTo } from './log.ts'
import { redactUrl, redactUrls } from './redact.ts'

/** How long a draining instance keeps its open connections, answering with Connection: close, before closing idle ones. */
const DRAIN_NOTICE_MS = 1_000

/** Start-up stops here: one line on stderr, exit status 2 (a bad configuration, a port in use, a file it cannot read). */
export function refuseToStart (message: string): never {
  process.stderr.write(`dbshift: ${message}\n`)
  process.exit(2)
}

/** Starts dbshift from the config file and the environment; exits 2 on a bad configuration. */
export async function main (overrides?: (config: Config) => void, deps: Partial<AppDeps> = {}): Promise<{ app: App, proxy: AddressInfo, admin: AddressInfo }> {
  let config: Config
  try {
    config = loadConfig()
    overrides?.(config)
    checkExtraCaFile(process.env)
  } catch (err) {
    refuseToStart((err as Error).message)
  }
  const log = createLogger(config.log.level)
  routeConsoleTo(log)
  const app = await buildApp(config, { ...deps, log })
  const { proxy, admin } = await app.listen().catch((err: NodeJS.ErrnoException) => refuseToStart(listenFailure(config, err)))
  log.info({
    proxy: `${proxy.address}:${proxy.port}`,
    admin: `${admin.address}:${admin.port}`,
    config: configPath(process.env),
    pools: redactUrls(config.pools),
    redis: redactUrl(config.redis.url),
    rollout: config.rollout.name,
    changes: config.admin.token === undefined ? 'disabled (no admin token)' : 'enabled'
  }, 'dbshift is listening')

  // SIGTERM/SIGINT: stop accepting, drain in-flight requests, then close pools and Redis.
  closeWithGrace({ delay: config.server.shutdownGraceMs }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal }, 'shutting down: draining in-flight requests')
    await app.close({ noticeMs: DRAIN_NOTICE_MS })
  })
  return { app, proxy, admin }
}

/** The one line for a port dbshift cannot listen on, naming the key it came from. */
export function listenFailure (config: Pick<Config, 'listen' | 'adminListen'>, err: NodeJS.ErrnoException & { port?: number }): string {
  const key = err.port !== undefined && err.port === parseHostPort(config.adminListen).port && err.port !== parseHostPort(config.listen).port ? 'adminListen' : 'listen'
  const why = err.code === 'EADDRINUSE'
    ? 'the address is already in use (another process listens on it)'
    : err.code === 'EACCES'
      ? 'permission denied (ports below 1024 need privileges)'
      : err.code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine\'s' : err.message
  return `cannot listen: ${key} = "${config[key]}": ${why}`
}

/** NODE_EXTRA_CA_CERTS names the CA file for rediss:// and https:// upstreams: a path that cannot be read is refused. */
function checkExtraCaFile (env: NodeJS.ProcessEnv): void {
  const path = env.NODE_EXTRA_CA_CERTS
  if (path === undefined || path === '') return
  try {
    readFileSync(path)
  } catch (err) {
    throw new Error(`NODE_EXTRA_CA_CERTS = "${path}": the certificate file cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err })
  }
}

// With `workers` > 1 this process becomes the primary of that many workers, each of which runs main().
if (import.meta.url === `file://${process.argv[1]}`) await startWorkersOr(main)
