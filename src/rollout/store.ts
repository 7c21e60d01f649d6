import type { RedisClient } from './redis.ts'
import type { RolloutKeys } from './keys.ts'
import { parsePercent, parseStateName, PERCENT_RULE, STATE_RULE, type RolloutStateName } from './values.ts'
import { MAX_KEY_BYTES } from '../routing/user-key.ts'

/** Why the rollout was rolled back: the `trip` hash. */
export interface Trip {
  level: string
  reason: string
  at: string
  by: string
}

/** Who makes a change, for the audit stream. */
export interface Actor {
  by: string
  source: 'cli' | 'api' | 'guard' | 'schedule' | 'redis'
}

/** The rollout as Redis holds it, after validation. Missing keys are undefined; user keys are byte strings. */
export interface RolloutRecord {
  percent: number | undefined
  state: RolloutStateName | undefined
  trip: Trip | undefined
  allow: string[]
  deny: string[]
}

/** A value found in Redis that is not valid: ignored, logged and counted by the caller. */
export interface InvalidValue {
  key: string
  value: string
  rule: string
}

/** The raw `percent` and `state` values (null = missing), before validation: what a hand-made change wrote. */
export interface RawDial {
  percent: string | null
  state: string | null
}

export interface AuditEntry {
  id: string
  fields: Record<string, string>
}

/** The value reported for a key of the wrong Redis type (a string where a set belongs, …). */
export const WRONG_TYPE = '(a value of the wrong Redis type)'

/** Audit stream length; older entries are trimmed (approximately, which is cheap). */
export const AUDIT_MAX_LENGTH = 10_000

// Each change is one script: the change, its audit entry and its event happen together or not at all.
const SET_PERCENT = `
local old = redis.call('GET', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 and tonumber(ARGV[1]) > (tonumber(old or ARGV[8]) or 0) then
  local frozen = redis.call('GET', KEYS[2]) or ''
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'at', ARGV[7], 'action', 'set_percent_refused', 'old', old or '', 'new', ARGV[1], 'by', ARGV[2], 'source', ARGV[3], 'reason', 'the ramp is frozen: ' .. frozen)
  return {0, old or '', frozen}
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'at', ARGV[7], 'action', 'set_percent', 'old', old or '', 'new', ARGV[1], 'by', ARGV[2], 'source', ARGV[3], 'reason', ARGV[4])
redis.call('PUBLISH', ARGV[5], cjson.encode({action = 'set_percent', value = ARGV[1], by = ARGV[2], source = ARGV[3], at = ARGV[7]}))
return {1, old or '', ''}
`

const ROLLBACK = `
local old = redis.call('GET', KEYS[1])
if old == 'rolled_back' then return 0 end
redis.call('SET', KEYS[1], 'rolled_back')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'level', ARGV[1], 'reason', ARGV[2], 'at', ARGV[3], 'by', ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'at', ARGV[8], 'action', 'rollback', 'old', old or 'active', 'new', 'rolled_back', 'by', ARGV[4], 'source', ARGV[5], 'reason', ARGV[2], 'level', ARGV[1])
redis.call('PUBLISH', ARGV[6], cjson.encode({action = 'rollback', value = ARGV[1], by = ARGV[4], source = ARGV[5], at = ARGV[3]}))
return 1
`

const RESUME = `
local old = redis.call('GET', KEYS[1])
if old ~= 'rolled_back' then return 0 end
redis.call('SET', KEYS[1], 'active')
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'at', ARGV[3], 'action', 'resume', 'old', old, 'new', 'active', 'by', ARGV[1], 'source', ARGV[2], 'reason', ARGV[6])
redis.call('PUBLISH', ARGV[4], cjson.encode({action = 'resume', value = 'active', by = ARGV[1], source = ARGV[2], at = ARGV[3]}))
return 1
`

// L2 guard: the first instance to freeze (or thaw) the ramp records it once; the others find it done.
const FREEZE = `
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'at', ARGV[4], 'action', 'freeze', 'old', '', 'new', ARGV[1], 'by', ARGV[2], 'source', ARGV[3], 'reason', ARGV[1])
redis.call('PUBLISH', ARGV[6], cjson.encode({action = 'freeze', value = ARGV[1], by = ARGV[2], source = ARGV[3], at = ARGV[4]}))
return 1
`

const THAW = `
local old = redis.call('GET', KEYS[1])
if not old then return 0 end
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'at', ARGV[4], 'action', 'unfreeze', 'old', old, 'new', '', 'by', ARGV[1], 'source', ARGV[2], 'reason', ARGV[3])
redis.call('PUBLISH', ARGV[6], cjson.encode({action = 'unfreeze', value = '', by = ARGV[1], source = ARGV[2], at = ARGV[4]}))
return 1
`

/**
 * Reads and changes one rollout in Redis. Every change is atomic with its audit entry and its event, so that
 * every instance hears of it at once and nobody has to guess who did what.
 */
export class RolloutStore {
  readonly keys: RolloutKeys
  readonly #redis: RedisClient
  readonly #initialPercent: number
  readonly #now: () => number

  constructor (redis: RedisClient, keys: RolloutKeys, options: { initialPercent?: number, now?: () => number } = {}) {
    this.#redis = redis
    this.keys = keys
    this.#initialPercent = options.initialPercent ?? 0
    this.#now = options.now ?? Date.now
  }

  /** One round trip: every key of the rollout, validated. */
  async read (): Promise<{ record: RolloutRecord, invalid: InvalidValue[], dial: string, raw: RawDial }> {
    const k = this.keys
    const results = await this.#redis.pipeline()
      .get(k.percent)
      .get(k.state)
      .hgetall(k.trip)
      .smembersBuffer(k.allow)
      .smembersBuffer(k.deny)
      .exec()
    const invalid: InvalidValue[] = []
    const value = (index: number, key: string): unknown => {
      const [err, result] = results?.[index] ?? [new Error('no reply'), null]
      if (err === null) return result
      if (/WRONGTYPE/.test(err.message)) {
        invalid.push({ key, value: WRONG_TYPE, rule: 'see the README for each key\'s type' })
        return null
      }
      throw err
    }
    const percentText = value(0, k.percent) as string | null
    const stateText = value(1, k.state) as string | null
    const tripHash = value(2, k.trip) as Record<string, string> | null
    const allow = members(value(3, k.allow) as Buffer[] | null, k.allow, invalid)
    const deny = members(value(4, k.deny) as Buffer[] | null, k.deny, invalid)

    let percent: number | undefined
    if (percentText !== null) {
      percent = parsePercent(percentText)
      if (percent === undefined) invalid.push({ key: k.percent, value: percentText, rule: PERCENT_RULE })
    }
    let state: RolloutStateName | undefined
    if (stateText !== null) {
      state = parseStateName(stateText)
      if (state === undefined) invalid.push({ key: k.state, value: stateText, rule: STATE_RULE })
    }
    const trip = tripHash === null || Object.keys(tripHash).length === 0
      ? undefined
      : { level: tripHash.level ?? '', reason: tripHash.reason ?? '', at: tripHash.at ?? '', by: tripHash.by ?? '' }
    return { record: { percent, state, trip, allow, deny }, invalid, dial: dialOf(percentText, stateText), raw: { percent: percentText, state: stateText } }
  }

  /**
   * Sets the percentage. Refused (applied: false) when it is a raise while the L2 guard has frozen the ramp.
   * The caller validates `percent` first.
   */
  async setPercent (percent: number, actor: Actor, reason = ''): Promise<{ applied: boolean, old: string, frozenBecause: string }> {
    const k = this.keys
    const [applied, old, frozenBecause] = await this.#redis.eval(SET_PERCENT, 3, k.percent, k.freeze, k.audit,
      String(percent), actor.by, actor.source, reason, k.events, AUDIT_MAX_LENGTH, this.#now(), this.#initialPercent) as [number, string, string]
    return { applied: applied === 1, old, frozenBecause }
  }

  /** Rolls everyone back to legacy. False when it already was: two guards tripping at once make one rollback. */
  async rollback (trip: Trip, actor: Actor): Promise<boolean> {
    const k = this.keys
    const done = await this.#redis.eval(ROLLBACK, 3, k.state, k.trip, k.audit,
      trip.level, trip.reason, trip.at, trip.by, actor.source, k.events, AUDIT_MAX_LENGTH,
      // The audit stream keeps time in ms like every other entry; the trip hash keeps the trip's own `at`.
      String(Number.isNaN(Date.parse(trip.at)) ? this.#now() : Date.parse(trip.at)))
    return done === 1
  }

  /** Freezes the ramp (L2): a raise of the percentage is refused while the key holds `reason`. False when it already was. */
  async freeze (reason: string, actor: Actor): Promise<boolean> {
    const k = this.keys
    const done = await this.#redis.eval(FREEZE, 2, k.freeze, k.audit, reason, actor.by, actor.source, this.#now(), AUDIT_MAX_LENGTH, k.events)
    return done === 1
  }

  /** Lifts the L2 freeze. False when there was none. */
  async unfreeze (actor: Actor, reason = ''): Promise<boolean> {
    const k = this.keys
    const done = await this.#redis.eval(THAW, 2, k.freeze, k.audit, actor.by, actor.source, reason, this.#now(), AUDIT_MAX_LENGTH, k.events)
    return done === 1
  }

  /** Re-arms the rollout after a rollback. False when it was not rolled back. */
  async resume (actor: Actor, reason = ''): Promise<boolean> {
    const k = this.keys
    const done = await this.#redis.eval(RESUME, 3, k.state, k.trip, k.audit,
      actor.by, actor.source, this.#now(), k.events, AUDIT_MAX_LENGTH, reason)
    return done === 1
  }

  /** Adds or removes a user (a UTF-8 string) in the allow or deny set. False when nothing changed. */
  async changeMember (set: 'allow' | 'deny', op: 'add' | 'rm', user: string, actor: Actor): Promise<boolean> {
    const key = this.keys[set]
    const action = `${set}_${op}`
    const at = String(this.#now())
    const multi = this.#redis.multi()
    if (op === 'add') multi.sadd(key, user)
    else multi.srem(key, user)
    multi.xadd(this.keys.audit, 'MAXLEN', '~', AUDIT_MAX_LENGTH, '*', 'at', at, 'action', action,
      'old', '', 'new', user, 'by', actor.by, 'source', actor.source, 'reason', '')
    multi.publish(this.keys.events, JSON.stringify({ action, value: user, by: actor.by, source: actor.source, at }))
    const results = await multi.exec()
    const [err, changed] = results?.[0] ?? [null, 0]
    if (err !== null) throw err
    return changed === 1
  }

  async listMembers (set: 'allow' | 'deny'): Promise<string[]> {
    return (await this.#redis.smembers(this.keys[set])).sort()
  }

  /** Records something that happened outside a dbshift write (a hand-made SET, a schedule step, a freeze). */
  async recordAudit (action: string, actor: Actor, change: { old?: string, new?: string, reason?: string, [field: string]: string | undefined }): Promise<void> {
    const fields: string[] = ['at', String(this.#now()), 'action', action, 'by', actor.by, 'source', actor.source]
    for (const [name, value] of Object.entries(change)) if (value !== undefined) fields.push(name, value)
    await this.#redis.xadd(this.keys.audit, 'MAXLEN', '~', AUDIT_MAX_LENGTH, '*', ...fields)
  }

  /** The newest audit entries, newest first. */
  async audit (count: number): Promise<AuditEntry[]> {
    const entries = await this.#redis.xrevrange(this.keys.audit, '+', '-', 'COUNT', count)
    return entries.map(([id, flat]) => {
      const fields: Record<string, string> = {}
      for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string
      return { id, fields }
    })
  }

  /** Tells every instance to re-read the rollout now (after a change made outside the scripts above). */
  async publish (action: string, actor: Actor, value = ''): Promise<void> {
    await this.#redis.publish(this.keys.events, JSON.stringify({ action, value, by: actor.by, source: actor.source, at: String(this.#now()) }))
  }
}

/** The raw percent and state as one string: the poll compares it to see whether anything moved. */
export function dialOf (percent: string | null | undefined, state: string | null | undefined): string {
  return `${percent ?? ''}|${state ?? ''}`
}

function members (raw: Buffer[] | null, key: string, invalid: InvalidValue[]): string[] {
  if (raw === null) return []
  const valid: string[] = []
  for (const member of raw) {
    if (member.length === 0 || member.length > MAX_KEY_BYTES) {
      invalid.push({ key, value: member.toString('utf8').slice(0, 64), rule: `a user key of 1 to ${MAX_KEY_BYTES} bytes` })
    } else {
      valid.push(member.toString('latin1'))
    }
  }
  return valid
}
