import {
  ConflictError, InvalidValueError, NoInstancesError, NoWayBackError, PoolUnhealthyError, RampFrozenError, RedisUnavailableError, WayBackNotReadyError, type ErrorCode
} from '../errors.ts'

/** A command that was not carried out: the code says why (and maps to the HTTP status and exit status). */
export interface Refused {
  status: 'refused'
  code: RefusalCode
  message: string
}

export type RefusalCode = Extract<ErrorCode,
  'DBSHIFT_ERR_REDIS_UNAVAILABLE' | 'DBSHIFT_ERR_RAMP_FROZEN' | 'DBSHIFT_ERR_CONFLICT' | 'DBSHIFT_ERR_INVALID_VALUE' | 'DBSHIFT_ERR_NO_INSTANCES' |
  'DBSHIFT_ERR_POOL_UNHEALTHY' | 'DBSHIFT_ERR_WAY_BACK_NOT_READY' | 'DBSHIFT_ERR_NO_WAY_BACK'>

/**
 * What a command did: `ok` (the change was made, audited and announced), `noop` (nothing to change: nothing was
 * written, audited or counted) or `refused`.
 */
export type CommandResult<T extends object = object> = (T & { status: 'ok' | 'noop' }) | Refused

export function refused (code: RefusalCode, message: string): Refused {
  return { status: 'refused', code, message }
}

const ERRORS: Record<RefusalCode, (message: string) => Error> = {
  DBSHIFT_ERR_REDIS_UNAVAILABLE: (message) => new RedisUnavailableError(message),
  DBSHIFT_ERR_RAMP_FROZEN: (message) => new RampFrozenError(message),
  DBSHIFT_ERR_CONFLICT: (message) => new ConflictError(message),
  DBSHIFT_ERR_INVALID_VALUE: (message) => new InvalidValueError(message),
  DBSHIFT_ERR_NO_INSTANCES: (message) => new NoInstancesError(message),
  DBSHIFT_ERR_POOL_UNHEALTHY: (message) => new PoolUnhealthyError(message),
  DBSHIFT_ERR_WAY_BACK_NOT_READY: (message) => new WayBackNotReadyError(message),
  DBSHIFT_ERR_NO_WAY_BACK: (message) => new NoWayBackError(message)
}

/** The result of a command that was carried out (or had nothing to do); throws the refusal's error otherwise. */
export function unwrap<T extends object> (result: CommandResult<T>): T & { status: 'ok' | 'noop' } {
  if (result.status === 'refused') throw ERRORS[result.code](result.message)
  return result
}
