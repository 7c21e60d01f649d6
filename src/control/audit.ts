/**
 * The audit vocabulary: every `action` an entry of the `audit` stream can carry, and who made it. The command
 * layer writes nothing else; the table of actions in docs/redis-keys.md is tested against this list.
 */
export const AUDIT_ACTIONS = [
  'set_percent',
  'set_percent_refused',
  'set_write_percent',
  'set_write_percent_refused',
  'set_route_percent',
  'set_route_percent_refused',
  'rollback',
  'rollback_refused',
  'resume',
  'freeze',
  'unfreeze',
  'allow_add',
  'allow_rm',
  'deny_add',
  'deny_rm',
  'hand_set',
  'way_back',
  'fence',
  'fence_release',
  'fence_hold',
  'schedule_start',
  'schedule_step',
  'schedule_bake',
  'schedule_hold',
  'schedule_pause',
  'schedule_continue',
  'schedule_abort',
  'schedule_done',
  'schedule_runner'
] as const

export type AuditAction = typeof AUDIT_ACTIONS[number]

/** Who makes a change, for the audit stream. */
export interface Actor {
  by: string
  source: 'cli' | 'api' | 'guard' | 'schedule' | 'redis'
}

/** Audit stream length; older entries are trimmed (approximately, which is cheap). */
export const AUDIT_MAX_LENGTH = 10_000
