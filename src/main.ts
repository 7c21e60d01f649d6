import type { AddressInfo } from 'node:net'
import closeWithGrace from 'close-with-grace'
import { pino } from 'pino'
import { buildApp, type App } from './app.ts'
import { startWorkersOr } from './cluster.ts'
import { loadConfig, type Config } from './config.ts'
import { readTls } from './reload.ts'

/** How long a draining instance keeps its open connections, answering with Connection: close, before closing idle ones. */
const DRAIN_NOTICE_MS = 1_000

/** Starts dbshift from the config file and the environment; exits 2 on a bad configuration. */
export async function main (overrides?: (config: Config) => void): Promise<{ app: App, proxy: AddressInfo, admin: AddressInfo }> {
  let config: Config
  try {
    config = loadConfig()
    overrides?.(config)
    if (config.tls !== undefined) readTls(config.tls) // a certificate that cannot be read is a bad configuration
  } catch (err) {
    process.stderr.write(`dbshift: ${(err as Error).message}\n`)
    process.exit(2)
  }
  const log = pino({ level: config.log.level, name: 'dbshift' })
  const reread = (): Config => {
    const next = loadConfig()
    overrides?.(next)
    return next
  }
  const app = await buildApp(config, { log, loadConfig: reread })
  const { proxy, admin } = await app.listen()
  log.info({ proxy: `${proxy.address}:${proxy.port}`, admin: `${admin.address}:${admin.port}`, rollout: config.rollout.name }, 'dbshift is listening')

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

// With `workers` > 1 this process becomes the primary of that many workers, each of which runs main().
if (import.meta.url === `file://${process.argv[1]}`) await startWorkersOr(main)
