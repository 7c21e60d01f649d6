import type { RedisClient } from '../rollout/redis.ts'
import { AUDIT_MAX_LENGTH, type Actor, type AuditAction } from './audit.ts'

/*
 * Every Lua script dbshift runs on the rollout's keys, registered once per client with ioredis `defineCommand`
 * (EVALSHA, falling back to EVAL after a Redis restart). Each change is one script: the change, its audit entry
 * and its event happen together or not at all.
 *
 * The argument convention of a change script: KEYS[1] is the audit stream, the script's own keys follow;
 * ARGV[1..6] is the audit header (at, by, source, reason, events channel, stream length), the script's own
 * arguments follow from ARGV[7]. The prelude below reads that header and gives every script `audit` and
 * `announce`, so that each entry and each event has the same shape whoever writes it.
 */
const PRELUDE = `
local AUDIT, AT, BY, SOURCE, REASON, EVENTS, MAXLEN = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local function audit(action, old, new, extra, reason)
  local fields = {'at', AT, 'action', action, 'old', old, 'new', new, 'by', BY, 'source', SOURCE, 'reason', reason or REASON}
  for i = 1, #(extra or {}) do fields[#fields + 1] = extra[i] end
  redis.call('XADD', AUDIT, 'MAXLEN', '~', MAXLEN, '*', unpack(fields))
end
local function announce(action, value)
  redis.call('PUBLISH', EVENTS, cjson.encode({action = action, value = value, by = BY, source = SOURCE, at = AT}))
end
-- The dial whose users write to migrated: min(write_percent, percent); the fence holds this cohort's writes.
local function writeCohort(percentKey, writeKey, initial)
  local percent = tonumber(redis.call('GET', percentKey) or initial) or 0
  local writes = tonumber(redis.call('GET', writeKey) or '')
  if writes and writes < percent then return tostring(writes) end
  return tostring(percent)
end
`

/**
 * KEYS: audit, percent, freeze, state, way_back. ARGV: percent, initial percent, why the way back is not ready
 * ('' = ready). Returns {1 set | 0 refused (frozen) | 3 refused (way back not ready) | 2 unchanged, old, reason,
 * state}. A raise is refused while frozen, and in reverse_sync while the reverse lag is unknown or too high.
 */
const SET_PERCENT = `
local old = redis.call('GET', KEYS[2])
local state = redis.call('GET', KEYS[4]) or ''
if old and tonumber(old) == tonumber(ARGV[7]) then return {2, old, '', state} end
local raise = tonumber(ARGV[7]) > (tonumber(old or ARGV[8]) or 0)
if redis.call('EXISTS', KEYS[3]) == 1 and raise then
  local frozen = redis.call('GET', KEYS[3]) or ''
  audit('set_percent_refused', old or '', ARGV[7], nil, 'the ramp is frozen: ' .. frozen)
  return {0, old or '', frozen, state}
end
if raise and ARGV[9] ~= '' and redis.call('GET', KEYS[5]) == 'reverse_sync' then
  audit('set_percent_refused', old or '', ARGV[7], nil, 'the way back is not ready: ' .. ARGV[9])
  return {3, old or '', ARGV[9], state}
end
redis.call('SET', KEYS[2], ARGV[7])
audit('set_percent', old or '', ARGV[7])
announce('set_percent', ARGV[7])
return {1, old or '', '', state}
`

/**
 * KEYS: audit, dial (write_percent or a route's dial), freeze, percent, way_back. ARGV: new value ('' deletes the
 * dial, which then follows percent), action, initial percent, why the way back is not ready ('' = it is), then extra
 * audit name/value pairs. A raise above what the dial gives now (its value, or percent when it has none) is refused
 * while the ramp is frozen, and in reverse_sync while the way back is not ready.
 * Returns {1 set | 0 refused (frozen) | 3 refused (way back) | 2 unchanged, old, the reason}.
 */
const SET_DIAL = `
local old = redis.call('GET', KEYS[2])
local extra = {}
for i = 11, #ARGV do extra[#extra + 1] = ARGV[i] end
if ARGV[7] == '' then
  if not old then return {2, '', ''} end
  redis.call('DEL', KEYS[2])
  audit(ARGV[8], old, '', extra)
  announce(ARGV[8], '')
  return {1, old, ''}
end
if old and tonumber(old) == tonumber(ARGV[7]) then return {2, old, ''} end
local before = tonumber(old or redis.call('GET', KEYS[4]) or ARGV[9]) or 0
local raise = tonumber(ARGV[7]) > before
if redis.call('EXISTS', KEYS[3]) == 1 and raise then
  local frozen = redis.call('GET', KEYS[3]) or ''
  audit(ARGV[8] .. '_refused', old or '', ARGV[7], extra, 'the ramp is frozen: ' .. frozen)
  return {0, old or '', frozen}
end
if raise and ARGV[10] ~= '' and redis.call('GET', KEYS[5]) == 'reverse_sync' then
  audit(ARGV[8] .. '_refused', old or '', ARGV[7], extra, 'the way back is not ready: ' .. ARGV[10])
  return {3, old or '', ARGV[10]}
end
redis.call('SET', KEYS[2], ARGV[7])
audit(ARGV[8], old or '', ARGV[7], extra)
announce(ARGV[8], ARGV[7])
return {1, old or '', ''}
`

/**
 * KEYS: audit, state, trip, way_back, fence, percent, write_percent. ARGV: level, trip time (ISO), force (1|''), fence id,
 * fence deadline (ISO), the cohort's percentage ('' = the write cohort's in Redis), initial percent, fenced here already
 * (1|''). With no way back (`none`) and no force, nothing is written. In reverse_sync, on an L3 trip in every
 * mode, and when the instance already fences locally (a rollback made while Redis was away), the rollback
 * engages the fence on the moving cohort (those who wrote to migrated before it) in the same step. Returns
 * {1 | 0 already rolled back | -1 refused, the mode, the fence id ('' = no fence engaged)}.
 */
const ROLLBACK = `
local mode = redis.call('GET', KEYS[4]) or 'dual_write'
if mode == 'none' and ARGV[9] ~= '1' then
  audit('rollback_refused', redis.call('GET', KEYS[2]) or 'active', 'rolled_back', {'level', ARGV[7]}, 'way back: none (a rollback needs force): ' .. REASON)
  return {-1, mode, ''}
end
local old = redis.call('GET', KEYS[2])
if old == 'rolled_back' then return {0, mode, ''} end
redis.call('SET', KEYS[2], 'rolled_back')
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'level', ARGV[7], 'reason', REASON, 'at', ARGV[8], 'by', BY)
audit('rollback', old or 'active', 'rolled_back', {'level', ARGV[7]})
announce('rollback', ARGV[7])
local fence = ''
if ARGV[7] == 'L3' or mode == 'reverse_sync' or ARGV[14] == '1' then
  if redis.call('EXISTS', KEYS[5]) == 0 then
    local deadline = ARGV[11]
    if ARGV[7] == 'L3' then deadline = '' end
    local percent = ARGV[12]
    if percent == '' then percent = writeCohort(KEYS[6], KEYS[7], ARGV[13]) end
    redis.call('HSET', KEYS[5], 'id', ARGV[10], 'level', ARGV[7], 'reason', REASON, 'at', ARGV[8], 'deadline', deadline, 'percent', percent)
    audit('fence', '', ARGV[10], {'level', ARGV[7]})
    announce('fence', ARGV[10])
    fence = ARGV[10]
  end
end
return {1, mode, fence}
`

/** KEYS: audit, way_back. ARGV: mode. Returns {1 | 0 unchanged, old}. Setting dual_write deletes the key (its default). */
const WAY_BACK = `
local old = redis.call('GET', KEYS[2]) or 'dual_write'
if old == ARGV[7] then return {0, old} end
if ARGV[7] == 'dual_write' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[7]) end
audit('way_back', old, ARGV[7])
announce('way_back', ARGV[7])
return {1, old}
`

/**
 * KEYS: audit, fence, percent, write_percent. ARGV: fence id, level, at (ISO), initial percent. A fence with no rollback (an L3
 * trip when there is no way back). Returns 1, or 0 when a fence is already in force.
 */
const FENCE = `
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'id', ARGV[7], 'level', ARGV[8], 'reason', REASON, 'at', ARGV[9], 'deadline', '', 'percent', writeCohort(KEYS[3], KEYS[4], ARGV[10]))
audit('fence', '', ARGV[7], {'level', ARGV[8]})
announce('fence', ARGV[7])
return 1
`

/** KEYS: audit, fence. ARGV: fence id ('' = whichever is in force), how (caught_up | restored | timeout | operator). Returns {1 | 0 not in force, id}. */
const FENCE_RELEASE = `
local id = redis.call('HGET', KEYS[2], 'id')
if not id or (ARGV[7] ~= '' and id ~= ARGV[7]) then return {0, ''} end
redis.call('DEL', KEYS[2])
audit('fence_release', id, '', {'how', ARGV[8]})
announce('fence_release', id)
return {1, id}
`

/** KEYS: audit, fence. ARGV: fence id. A timed-out fence kept (onTimeout: hold), recorded once. Returns 1, or 0. */
const FENCE_HOLD = `
if redis.call('HGET', KEYS[2], 'id') ~= ARGV[7] then return 0 end
if redis.call('HSETNX', KEYS[2], 'held', AT) == 0 then return 0 end
audit('fence_hold', ARGV[7], ARGV[7])
announce('fence_hold', ARGV[7])
return 1
`

/**
 * KEYS: audit, state, trip, armed, fence. Returns 1, or 0 when it was not rolled back. The re-arm time is the
 * resume's. A fence of the rollback goes with it: the cohort is back on migrated, which has its data.
 */
const RESUME = `
local old = redis.call('GET', KEYS[2])
if old ~= 'rolled_back' then return 0 end
redis.call('SET', KEYS[2], 'active')
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], AT)
audit('resume', old, 'active')
local fence = redis.call('HGET', KEYS[5], 'id')
if fence then
  redis.call('DEL', KEYS[5])
  audit('fence_release', fence, '', {'how', 'resume'})
end
announce('resume', 'active')
return 1
`

/** KEYS: audit, freeze. The reason is the freeze's value. Returns 1, or 0 when it already was frozen. */
const FREEZE = `
if not redis.call('SET', KEYS[2], REASON, 'NX') then return 0 end
audit('freeze', '', REASON)
announce('freeze', REASON)
return 1
`

/** KEYS: audit, freeze. Returns 1, or 0 when it was not frozen. */
const UNFREEZE = `
local old = redis.call('GET', KEYS[2])
if not old then return 0 end
redis.call('DEL', KEYS[2])
audit('unfreeze', old, '')
announce('unfreeze', '')
return 1
`

/** KEYS: audit, set. ARGV: add|rm, user, action. Returns 1, or 0 when nothing changed (then nothing is audited). */
const MEMBER = `
local changed = ARGV[7] == 'add' and redis.call('SADD', KEYS[2], ARGV[8]) or redis.call('SREM', KEYS[2], ARGV[8])
if changed == 0 then return 0 end
audit(ARGV[9], '', ARGV[8])
announce(ARGV[9], ARGV[8])
return 1
`

/** KEYS: audit. ARGV: action, old, new, then extra name/value pairs. An entry and nothing else (no event). */
const RECORD = `
local extra = {}
for i = 11, #ARGV do extra[#extra + 1] = ARGV[i] end
audit(ARGV[7], ARGV[8], ARGV[9], extra)
return 1
`

/**
 * KEYS: audit, claim, armed. ARGV: claimant, claim ms, key name, old, new, re-arm (1|0), way-back warning ('').
 * A change made by hand:
 * the first instance to claim it records it (and, for a resume, the re-arm time); the others find it claimed.
 */
const HAND_CHANGE = `
if not redis.call('SET', KEYS[2], ARGV[7], 'PX', ARGV[8], 'NX') then return 0 end
local extra = {'key', ARGV[9]}
if (ARGV[13] or '') ~= '' then extra = {'key', ARGV[9], 'way_back', ARGV[13]} end
audit('hand_set', ARGV[10], ARGV[11], extra)
if ARGV[12] == '1' then redis.call('SET', KEYS[3], AT) end
return 1
`

/**
 * KEYS: audit, schedule, percent, state, freeze, write_percent. ARGV: expected schedule text, next text ('' deletes),
 * percentage to set with it (''), action ('' writes no entry), old, new, write dial to set with it (''). Compare-and-
 * set of the schedule with its entry and event; a step's dials are set in the same step (never while rolled back or
 * frozen, never over another write), each audited like the same change made by hand through dbshift.
 */
const SCHEDULE = `
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[7] then return 'conflict' end
if ARGV[9] ~= '' or ARGV[13] ~= '' then
  if redis.call('GET', KEYS[4]) == 'rolled_back' then return 'rolled_back' end
  if redis.call('EXISTS', KEYS[5]) == 1 then return 'frozen' end
end
if ARGV[9] ~= '' then
  local old = redis.call('GET', KEYS[3])
  redis.call('SET', KEYS[3], ARGV[9])
  audit('set_percent', old or '', ARGV[9])
end
if ARGV[13] ~= '' then
  local old = redis.call('GET', KEYS[6])
  if not old or tonumber(old) ~= tonumber(ARGV[13]) then
    redis.call('SET', KEYS[6], ARGV[13])
    audit('set_write_percent', old or '', ARGV[13])
  end
end
if ARGV[8] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[8]) end
if ARGV[10] == '' then return 'ok' end
audit(ARGV[10], ARGV[11], ARGV[12])
announce(ARGV[10], ARGV[12])
return 'ok'
`

// Scripts that write no audit entry take their own keys and arguments.

/** KEYS: lease. ARGV: holder, ttl ms. Takes the lease or renews it; 0 when someone else holds it. */
const LEASE_ACQUIRE = `
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`

/** KEYS: lease. ARGV: holder. */
const LEASE_RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`

/**
 * KEYS: instances. ARGV: id, beat JSON, now, ttl ms, prune (1|0). Writes one instance's beat, sometimes drops the
 * beats that expired (their instance is gone; readers skip them anyway), and keeps the whole hash expiring so
 * that a fleet that stopped leaves nothing behind.
 */
const BEAT = `
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[5] == '1' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local ok, beat = pcall(cjson.decode, all[i + 1])
    if not ok or type(beat) ~= 'table' or (tonumber(beat.expiresAt) or 0) < tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
`

/**
 * Adds this instance's counts to the slot keys ("<requests> <errors>", expiring) and its failing users' hashes to
 * the slot's HyperLogLog, then reads each group of slots back: MGET of the counts and PFCOUNT of the users (the
 * union, so a user failing on several instances or in several slots counts once). One round trip.
 * KEYS: per write, the counts key and the users key; then per group, the same pairs.
 * ARGV: writes, then per write: requests, errors, ttl, n, n hashes; then groups, then per group its slot count.
 * Its keys vary with the slots it touches: called with their count first.
 */
const TRAFFIC_EXCHANGE = `
local writes = tonumber(ARGV[1])
local at = 2
for i = 1, writes do
  local key = KEYS[i * 2 - 1]
  local old = redis.call('GET', key)
  local r, e = 0, 0
  if old then
    local a, b = string.match(old, '^(%d+) (%d+)$')
    r, e = tonumber(a) or 0, tonumber(b) or 0
  end
  local ttl = ARGV[at + 2]
  redis.call('SET', key, string.format('%d %d', r + tonumber(ARGV[at]), e + tonumber(ARGV[at + 1])), 'EX', ttl)
  local n = tonumber(ARGV[at + 3])
  if n > 0 then
    redis.call('PFADD', KEYS[i * 2], unpack(ARGV, at + 4, at + 3 + n))
    redis.call('EXPIRE', KEYS[i * 2], ttl)
  end
  at = at + 4 + n
end
local out = {}
local groups = tonumber(ARGV[at])
local k = writes * 2
for g = 1, groups do
  local n = tonumber(ARGV[at + g])
  local counts, users = {}, {}
  for j = 1, n do
    counts[j] = KEYS[k + j * 2 - 1]
    users[j] = KEYS[k + j * 2]
  end
  k = k + n * 2
  if n > 0 then
    out[#out + 1] = redis.call('MGET', unpack(counts))
    out[#out + 1] = redis.call('PFCOUNT', unpack(users))
  else
    out[#out + 1] = {}
    out[#out + 1] = 0
  end
end
return out
`

/** Every script: its own keys (the audit stream not counted; -1: as many as the call gives) and whether it takes the audit header. */
const SCRIPTS = {
  dbshiftSetPercent: { keys: 4, lua: SET_PERCENT, audited: true },
  dbshiftSetDial: { keys: 4, lua: SET_DIAL, audited: true },
  dbshiftRollback: { keys: 6, lua: ROLLBACK, audited: true },
  dbshiftWayBack: { keys: 1, lua: WAY_BACK, audited: true },
  dbshiftFence: { keys: 3, lua: FENCE, audited: true },
  dbshiftFenceRelease: { keys: 1, lua: FENCE_RELEASE, audited: true },
  dbshiftFenceHold: { keys: 1, lua: FENCE_HOLD, audited: true },
  dbshiftResume: { keys: 4, lua: RESUME, audited: true },
  dbshiftFreeze: { keys: 1, lua: FREEZE, audited: true },
  dbshiftUnfreeze: { keys: 1, lua: UNFREEZE, audited: true },
  dbshiftMember: { keys: 1, lua: MEMBER, audited: true },
  dbshiftRecord: { keys: 0, lua: RECORD, audited: true },
  dbshiftHandChange: { keys: 2, lua: HAND_CHANGE, audited: true },
  dbshiftSchedule: { keys: 5, lua: SCHEDULE, audited: true },
  dbshiftLeaseAcquire: { keys: 1, lua: LEASE_ACQUIRE, audited: false },
  dbshiftLeaseRelease: { keys: 1, lua: LEASE_RELEASE, audited: false },
  dbshiftBeat: { keys: 1, lua: BEAT, audited: false },
  dbshiftTrafficExchange: { keys: -1, lua: TRAFFIC_EXCHANGE, audited: false }
} as const

export type AuditedScript = { [K in keyof typeof SCRIPTS]: typeof SCRIPTS[K]['audited'] extends true ? K : never }[keyof typeof SCRIPTS]
export type PlainScript = Exclude<keyof typeof SCRIPTS, AuditedScript>

/** What every audited change says about itself. */
export interface AuditHeader {
  actor: Actor
  reason: string
  /** ms since the epoch. */
  at: number
}

type ScriptMethod = (...args: Array<string | number>) => Promise<unknown>

const registered = new WeakSet<RedisClient>()

/** Registers every script on a client (once; later calls find them there). */
export function defineScripts (redis: RedisClient): void {
  if (registered.has(redis)) return
  for (const [name, script] of Object.entries(SCRIPTS)) {
    const numberOfKeys = script.keys < 0 ? undefined : script.keys + (script.audited ? 1 : 0)
    redis.defineCommand(name, { numberOfKeys, lua: script.audited ? PRELUDE + script.lua : script.lua })
  }
  registered.add(redis)
}

/** The scripts of one rollout on one client. */
export class Scripts {
  readonly #redis: RedisClient
  readonly #audit: string
  readonly #events: string

  constructor (redis: RedisClient, keys: { audit: string, events: string }) {
    defineScripts(redis)
    this.#redis = redis
    this.#audit = keys.audit
    this.#events = keys.events
  }

  /** Runs a change script: its keys after the audit stream, the audit header before its arguments. */
  async change (name: AuditedScript, header: AuditHeader, keys: string[], args: Array<string | number> = []): Promise<unknown> {
    const { actor, reason, at } = header
    return await this.#method(name)(this.#audit, ...keys, String(at), actor.by, actor.source, reason, this.#events, AUDIT_MAX_LENGTH, ...args)
  }

  /** Records an entry that goes with no change of its own (a runner taking the schedule over). */
  async record (action: AuditAction, header: AuditHeader, fields: { old?: string, new?: string, [name: string]: string | undefined }): Promise<void> {
    const extra: string[] = []
    for (const [name, value] of Object.entries(fields)) if (name !== 'old' && name !== 'new' && value !== undefined) extra.push(name, value)
    await this.change('dbshiftRecord', header, [], [action, fields.old ?? '', fields.new ?? '', ...extra])
  }

  async run (name: PlainScript, keys: string[], args: Array<string | number>): Promise<unknown> {
    const method = this.#method(name)
    return SCRIPTS[name].keys < 0 ? await method(keys.length, ...keys, ...args) : await method(...keys, ...args)
  }

  #method (name: keyof typeof SCRIPTS): ScriptMethod {
    const method = (this.#redis as unknown as Record<string, ScriptMethod>)[name] as ScriptMethod
    return method.bind(this.#redis)
  }
}
