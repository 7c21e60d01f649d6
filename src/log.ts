import { format } from 'node:util'
import { pino, stdSerializers, type DestinationStream, type Logger, type LoggerOptions } from 'pino'
import { redactUrl, withoutQuery } from './redact.ts'

/**
 * The logger options of every dbshift process: JSON lines, and nothing secret in them. A Redis error carries the
 * command it answered (`err.command.args` of a failed AUTH holds the password): only the command's name is kept.
 * Request targets are logged without their query string (tokens travel there), URLs without credentials.
 */
export function loggerOptions (level: string): LoggerOptions {
  return {
    level,
    name: 'dbshift',
    serializers: {
      err: errorWithoutSecrets,
      url: (url: unknown) => typeof url === 'string' ? withoutQuery(url) : url,
      redis: (url: unknown) => typeof url === 'string' ? redactUrl(url) : url
    }
  }
}

export function createLogger (level: string, destination?: DestinationStream): Logger {
  return destination === undefined ? pino(loggerOptions(level)) : pino(loggerOptions(level), destination)
}

function errorWithoutSecrets (err: unknown): unknown {
  if (!(err instanceof Error)) return err
  const serialized = stdSerializers.err(err) as ReturnType<typeof stdSerializers.err> & { command?: { name?: unknown, args?: unknown } }
  if (serialized.command !== undefined) serialized.command = { name: serialized.command.name }
  return serialized
}

/**
 * Libraries that print to the console (ioredis warns with console.warn) would put plain text among the JSON lines:
 * the console of a dbshift process writes through its logger instead.
 */
export function routeConsoleTo (log: Logger): void {
  const child = log.child({ source: 'console' })
  console.log = (...args: unknown[]) => { child.info(format(...args)) }
  console.info = console.log
  console.debug = (...args: unknown[]) => { child.debug(format(...args)) }
  console.warn = (...args: unknown[]) => { child.warn(format(...args)) }
  console.error = (...args: unknown[]) => { child.error(format(...args)) }
}
