import type { Config } from './config.ts'
import { parseHostPort } from './config.ts'

/** Start-up stops here: one line on stderr, exit status 2 (a bad configuration, a port in use, a file it cannot read). */
export function refuseToStart (message: string): never {
  process.stderr.write(`dbshift: ${message}\n`)
  process.exit(2)
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
