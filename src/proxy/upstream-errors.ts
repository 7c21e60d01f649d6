import { BadRequestError, OverloadedError, UpstreamTimeoutError, UpstreamUnavailableError } from '../errors.ts'
import type { UpstreamErrorReason } from '../metrics.ts'
import type { Version } from '../routing/decide.ts'

export interface UpstreamFailure {
  reason: UpstreamErrorReason
  /** The failure came before any byte of the request reached the upstream (safe to send elsewhere). */
  beforeSend: boolean
  /**
   * The failure is this side's, raised before anything was sent (an argument undici refuses, no file descriptor
   * left): it says nothing about the upstream and is never counted as the version's error.
   */
  local: boolean
  /** The answer to give the client, with the cause kept. */
  error: InstanceType<typeof UpstreamTimeoutError> | InstanceType<typeof UpstreamUnavailableError> | InstanceType<typeof BadRequestError> | InstanceType<typeof OverloadedError>
}

/** Errors of this process, not of the upstream: what the client is told instead. */
const LOCAL: Record<string, 'request' | 'resources'> = {
  UND_ERR_INVALID_ARG: 'request',
  UND_ERR_NOT_SUPPORTED: 'request',
  ERR_INVALID_ARG_TYPE: 'request',
  ERR_INVALID_ARG_VALUE: 'request',
  ERR_INVALID_HTTP_TOKEN: 'request',
  ERR_INVALID_CHAR: 'request',
  EMFILE: 'resources',
  ENFILE: 'resources',
  ENOBUFS: 'resources',
  ENOMEM: 'resources',
  EADDRNOTAVAIL: 'resources'
}

const REASONS: Record<string, { reason: UpstreamErrorReason, beforeSend: boolean }> = {
  ECONNREFUSED: { reason: 'refused', beforeSend: true },
  UND_ERR_CONNECT_TIMEOUT: { reason: 'timeout', beforeSend: true },
  ETIMEDOUT: { reason: 'timeout', beforeSend: true },
  ENOTFOUND: { reason: 'dns', beforeSend: true },
  EAI_AGAIN: { reason: 'dns', beforeSend: true },
  EHOSTUNREACH: { reason: 'refused', beforeSend: true },
  ENETUNREACH: { reason: 'refused', beforeSend: true },
  UND_ERR_HEADERS_TIMEOUT: { reason: 'timeout', beforeSend: false },
  UND_ERR_BODY_TIMEOUT: { reason: 'timeout', beforeSend: false },
  ECONNRESET: { reason: 'reset', beforeSend: false },
  EPIPE: { reason: 'reset', beforeSend: false },
  UND_ERR_SOCKET: { reason: 'reset', beforeSend: false },
  UND_ERR_CLOSED: { reason: 'reset', beforeSend: false },
  UND_ERR_RES_CONTENT_LENGTH_MISMATCH: { reason: 'protocol', beforeSend: false },
  UND_ERR_INFO: { reason: 'protocol', beforeSend: false },
  HPE_INVALID_CONSTANT: { reason: 'protocol', beforeSend: false }
}

/**
 * Maps a transport error to what it means for the client (502 or 504) and for the guards (an upstream error
 * with a reason). This table is the one definition of "the pool failed".
 */
export function classifyUpstreamError (err: Error & { code?: string }, version: Version): UpstreamFailure {
  const code = err.code ?? ''
  const local = LOCAL[code]
  if (local !== undefined) {
    const error = local === 'request' ? new BadRequestError(`the request cannot be forwarded: ${err.message}`, { cause: err }) : new OverloadedError({ cause: err })
    return { reason: 'other', beforeSend: true, local: true, error }
  }
  // undici's HTTPParserError has no code when llhttp's error number has no name: the upstream answered badly.
  const known = REASONS[code] ?? (err.name === 'HTTPParserError' ? { reason: 'protocol' as const, beforeSend: false } : undefined) ?? (code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL') || /CERT|SSL/.test(code)
    ? { reason: 'tls' as const, beforeSend: true }
    : code.startsWith('HPE_') ? { reason: 'protocol' as const, beforeSend: false } : { reason: 'other' as const, beforeSend: false })
  const error = known.reason === 'timeout'
    ? new UpstreamTimeoutError(version, { cause: err })
    : new UpstreamUnavailableError(version, { cause: err })
  return { ...known, local: false, error }
}
