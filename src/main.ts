import { readFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import closeWithGrace from 'close-with-grace'
import { buildApp, type App, type AppDeps } from './app.ts'
import { startWorkersOr } from './cluster.ts'
import { configPath, loadConfig, type Config } from './config.ts'
import { listenFailure, refuseToStart } from './exit.ts'
import { createLogger, routeConsoleTo } from './log.ts'
import { redactUrl, redactUrls } from './redact.ts'
import { readTls } from './reload.ts'

/** How long a draining instance keeps its open connections, answering with Connection: close, before closing idle ones. */
const DRAIN_NOTICE_MS = 1_000

/** Starts dbshift from the config file and the environment; exits 2 on a bad configuration. */
export async function main (overrides?: (config: Config) => void, deps: Partial<AppDeps> = {}): Promise<{ app: App, proxy: AddressInfo, admin: AddressInfo }> {
  let config: Config
  try {
    config = loadConfig()
    overrides?.(config)
    if (config.tls !== undefined) readTls(config.tls) // a certificate that cannot be read is a bad configuration
    checkExtraCaFile(process.env)
  } catch (err) {
    refuseToStart((err as Error).message)
  }
  const log = createLogger(config.log.level)
  routeConsoleTo(log)
  const reread = (): Config => {
    const next = loadConfig()
    overrides?.(next)
    return next
  }
  const app = await buildApp(config, { ...deps, log, loadConfig: reread })
  const { proxy, admin } = await app.listen().catch((err: NodeJS.ErrnoException) => refuseToStart(listenFailure(config, err)))
  log.info({
    proxy: `${proxy.address}:${proxy.port}`,
    admin: `${admin.address}:${admin.port}`,
    config: configPath(process.env),
    pools: { legacy: redactUrls(config.pools.legacy.members), migrated: redactUrls(config.pools.migrated.members) },
    redis: redactUrl(config.redis.url),
    rollout: config.rollout.name,
    changes: config.admin.token === undefined ? 'disabled (no admin token)' : 'enabled'
  }, 'dbshift is listening')

  // SIGHUP: re-read the file and the environment and apply what may change while running (see src/reload.ts).
  process.on('SIGHUP', () => { app.reload().catch((err: unknown) => { log.error({ err }, 'reload failed') }) })

  // SIGTERM/SIGINT: stop accepting, drain in-flight requests, then close pools and Redis (SIGHUP is the reload above).
  closeWithGrace({ delay: config.server.shutdownGraceMs, skip: ['SIGHUP'] }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'shutting down after an error')
    else log.info({ signal }, 'shutting down: draining in-flight requests')
    await app.close({ noticeMs: DRAIN_NOTICE_MS })
  })
  return { app, proxy, admin }
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
