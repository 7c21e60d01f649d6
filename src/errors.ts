import createError from '@fastify/error'

/** The last argument of every error: the low-level error it wraps. */
type Cause = { cause?: unknown }

/** Every error code dbshift can answer with or exit on. docs/error-codes.md documents each one. */
export const ERROR_CODES = [
  'DBSHIFT_ERR_CONFIG',
  'DBSHIFT_ERR_BAD_REQUEST',
  'DBSHIFT_ERR_NOT_FOUND',
  'DBSHIFT_ERR_URI_TOO_LONG',
  'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE',
  'DBSHIFT_ERR_UPSTREAM_TIMEOUT',
  'DBSHIFT_ERR_UPSTREAM_BUSY',
  'DBSHIFT_ERR_OVERLOADED',
  'DBSHIFT_ERR_TOO_MANY_UPGRADED',
  'DBSHIFT_ERR_SHUTTING_DOWN',
  'DBSHIFT_ERR_FEATURE_PAUSED',
  'DBSHIFT_ERR_UNAUTHORIZED',
  'DBSHIFT_ERR_ADMIN_DISABLED',
  'DBSHIFT_ERR_REDIS_UNAVAILABLE',
  'DBSHIFT_ERR_RAMP_FROZEN',
  'DBSHIFT_ERR_INVALID_VALUE',
  'DBSHIFT_ERR_CONFLICT',
  'DBSHIFT_ERR_NO_INSTANCES',
  'DBSHIFT_ERR_WAY_BACK_NOT_READY',
  'DBSHIFT_ERR_NO_WAY_BACK',
  'DBSHIFT_ERR_WRITES_FENCED',
  'DBSHIFT_ERR_WORKERS_UNAVAILABLE',
  'DBSHIFT_ERR_POOL_UNHEALTHY',
  'DBSHIFT_ERR_HOST_NOT_ALLOWED'
] as const

export type ErrorCode = typeof ERROR_CODES[number]

/** A bad configuration: the message names the key, the value and what is allowed. */
export const ConfigError = createError<'DBSHIFT_ERR_CONFIG', [string, Cause?]>('DBSHIFT_ERR_CONFIG', 'invalid configuration: %s')

/** The request itself is malformed (for example two Host headers) and is not forwarded. */
export const BadRequestError = createError<'DBSHIFT_ERR_BAD_REQUEST', 400, [string, Cause?]>('DBSHIFT_ERR_BAD_REQUEST', '%s', 400)

/** The admin port has no such route. */
export const NotFoundError = createError<'DBSHIFT_ERR_NOT_FOUND', 404, [string, Cause?]>('DBSHIFT_ERR_NOT_FOUND', 'no such admin route: %s', 404)

/** The request target is longer than server.maxUrlBytes. */
export const UriTooLongError = createError<'DBSHIFT_ERR_URI_TOO_LONG', 414, [Cause?]>('DBSHIFT_ERR_URI_TOO_LONG', 'the request target is too long', 414)

/** The chosen pool refused, reset or could not be reached. */
export const UpstreamUnavailableError = createError<'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE', 502, [string, Cause?]>(
  'DBSHIFT_ERR_UPSTREAM_UNAVAILABLE', 'the %s pool could not answer', 502)

/** The chosen pool did not answer in time. */
export const UpstreamTimeoutError = createError<'DBSHIFT_ERR_UPSTREAM_TIMEOUT', 504, [string, Cause?]>(
  'DBSHIFT_ERR_UPSTREAM_TIMEOUT', 'the %s pool did not answer in time', 504)

/** No connection to the chosen pool became free within upstream.queueTimeoutMs. */
export const UpstreamBusyError = createError<'DBSHIFT_ERR_UPSTREAM_BUSY', 503, [string, Cause?]>(
  'DBSHIFT_ERR_UPSTREAM_BUSY', 'no connection to the %s pool became free in time', 503)

/** Too many requests in flight: shed rather than fall over. */
export const OverloadedError = createError<'DBSHIFT_ERR_OVERLOADED', 503, [Cause?]>('DBSHIFT_ERR_OVERLOADED', 'too many requests in flight', 503)

/** More than server.maxUpgraded WebSockets are open: a new handshake is refused rather than held. */
export const TooManyUpgradedError = createError<'DBSHIFT_ERR_TOO_MANY_UPGRADED', 503, [number, Cause?]>(
  'DBSHIFT_ERR_TOO_MANY_UPGRADED', 'too many open WebSockets (server.maxUpgraded = %d)', 503)

/** A WebSocket handshake reached an instance that is draining before it exits: connect again (elsewhere). */
export const ShuttingDownError = createError<'DBSHIFT_ERR_SHUTTING_DOWN', 503, [Cause?]>(
  'DBSHIFT_ERR_SHUTTING_DOWN', 'this instance is shutting down; connect again', 503)

/** L2 guard: a new-feature route is paused while the primary database is overloaded. */
export const FeaturePausedError = createError<'DBSHIFT_ERR_FEATURE_PAUSED', 503, [Cause?]>(
  'DBSHIFT_ERR_FEATURE_PAUSED', 'this feature is paused while the database is under high load', 503)

export const UnauthorizedError = createError<'DBSHIFT_ERR_UNAUTHORIZED', 401, [Cause?]>(
  'DBSHIFT_ERR_UNAUTHORIZED', 'a valid "Authorization: Bearer <token>" header is required', 401)

export const AdminDisabledError = createError<'DBSHIFT_ERR_ADMIN_DISABLED', 403, [Cause?]>(
  'DBSHIFT_ERR_ADMIN_DISABLED', 'changes through the admin API are disabled: set DBSHIFT_ADMIN_TOKEN (or admin.token in the config file) to enable them', 403)

export const RedisUnavailableError = createError<'DBSHIFT_ERR_REDIS_UNAVAILABLE', 503, [string, Cause?]>(
  'DBSHIFT_ERR_REDIS_UNAVAILABLE', 'Redis is unreachable: %s', 503)

export const RampFrozenError = createError<'DBSHIFT_ERR_RAMP_FROZEN', 409, [string, Cause?]>(
  'DBSHIFT_ERR_RAMP_FROZEN', 'the ramp is frozen: %s', 409)

export const InvalidValueError = createError<'DBSHIFT_ERR_INVALID_VALUE', 400, [string, Cause?]>(
  'DBSHIFT_ERR_INVALID_VALUE', '%s', 400)

/** A change that does not fit the rollout's state: a ramp while one is active, or while rolled back. */
export const ConflictError = createError<'DBSHIFT_ERR_CONFLICT', 409, [string, Cause?]>('DBSHIFT_ERR_CONFLICT', '%s', 409)

/** A change with the `dbshift` command to a rollout that no live instance follows (a typo, most likely). */
export const NoInstancesError = createError<'DBSHIFT_ERR_NO_INSTANCES', 409, [string, Cause?]>('DBSHIFT_ERR_NO_INSTANCES', '%s', 409)

/** With `workers` > 1: no worker could answer an admin request relayed by the primary. */
export const WorkersUnavailableError = createError<'DBSHIFT_ERR_WORKERS_UNAVAILABLE', 503, [string, Cause?]>(
  'DBSHIFT_ERR_WORKERS_UNAVAILABLE', 'no worker could answer: %s', 503)

/** A raise onto a migrated pool none of whose members is healthy: users would be sent to a dead pool. */
export const PoolUnhealthyError = createError<'DBSHIFT_ERR_POOL_UNHEALTHY', 409, [string, Cause?]>(
  'DBSHIFT_ERR_POOL_UNHEALTHY', 'the migrated pool has no healthy member: %s', 409)

/** A request to the admin port under a name that is not one of its own (DNS rebinding). */
export const HostNotAllowedError = createError<'DBSHIFT_ERR_HOST_NOT_ALLOWED', 403, [string, Cause?]>(
  'DBSHIFT_ERR_HOST_NOT_ALLOWED', 'the Host header %s is not a name of this admin port; add it to admin.allowedHosts', 403)

/** In reverse_sync, a raise while the reverse lag is unknown or above guards.wayBack.maxLagSeconds. */
export const WayBackNotReadyError = createError<'DBSHIFT_ERR_WAY_BACK_NOT_READY', 409, [string, Cause?]>(
  'DBSHIFT_ERR_WAY_BACK_NOT_READY', 'the way back is not ready: %s', 409)

/** With no way back (`way_back` = none), a manual rollback without force. */
export const NoWayBackError = createError<'DBSHIFT_ERR_NO_WAY_BACK', 409, [string, Cause?]>('DBSHIFT_ERR_NO_WAY_BACK', '%s', 409)

/** A write of the moving cohort while the fence holds it (the reverse sync has not caught up yet). */
export const WritesFencedError = createError<'DBSHIFT_ERR_WRITES_FENCED', 503, [Cause?]>(
  'DBSHIFT_ERR_WRITES_FENCED', 'writes are held while your data is copied back; try again shortly', 503)
