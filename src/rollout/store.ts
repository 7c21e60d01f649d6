import type { RedisClient } from './redis.ts'
import type { RolloutKeys } from './keys.ts'
import { parsePercent, parseStateName, parseWayBack, PERCENT_RULE, STATE_RULE, WAY_BACK_RULE, type RolloutStateName, type WayBackMode } from './values.ts'
import { FENCE_RULE, parseFence, type Fence } from './way-back.ts'
import { InvalidValueError } from '../errors.ts'
import { MAX_KEY_BYTES } from '../routing/user-key.ts'

/** Why the rollout was rolled back: the `trip` hash. */
export interface Trip {
  level: string
  reason: string
  at: string
  by: string
}

/** Where a dial's value came from: Redis held a valid one, none, or an invalid one (ignored). */
export type ValueSource = 'set' | 'missing' | 'invalid'

/**
 * The rollout as Redis holds it, validated: what every instance should apply. A dial whose key is missing or
 * invalid takes its default here; `found` says which, since an instance keeps its last valid value instead.
 */
export interface SharedRollout {
  percent: number
  /** The write dial; undefined when missing (writes follow `percent`). */
  writePercent: number | undefined
  /** The route dials that hold a valid value, by route name; a route without one follows `percent`. */
  routePercent: Map<string, number>
  state: RolloutStateName
  trip: Trip | undefined
  /** User keys as byte strings. */
  allow: string[]
  deny: string[]
  /** When a resume last re-armed the guards, fleet-wide (ms since the epoch; 0 = never). */
  armedAt: number
  /** Why the L2 guard froze the ramp (raises are refused), or null. */
  freeze: string | null
  found: { percent: ValueSource, state: ValueSource, writePercent: ValueSource, wayBack: ValueSource, fence: ValueSource }
  /** Route dials whose value was invalid (ignored): the instance keeps its last valid value for them. */
  invalidRoutes: string[]
  /** How the data gets back to legacy (missing: dual_write). */
  wayBack: WayBackMode
  /** The fence on the moving cohort's writes, or undefined. */
  fence: Fence | undefined
  /** The dials' raw text (null = missing): what a change made by hand wrote; `others` as in otherDialKeys. */
  raw: { percent: string | null, state: string | null, others: ReadonlyArray<string | null> }
  /** The write dial and the route dials as one string: the poll compares it to see whether they moved. */
  otherDials: string
  /** Values that were ignored, for the caller to log and count. */
  invalid: InvalidValue[]
}

/** A value found in Redis that is not valid: ignored, logged and counted by the caller. */
export interface InvalidValue {
  key: string
  value: string
  rule: string
}

export interface AuditEntry {
  id: string
  fields: Record<string, string>
}

/** The value reported for a key of the wrong Redis type (a string where a set belongs, …). */
export const WRONG_TYPE = '(a value of the wrong Redis type)'

/**
 * Reads one rollout from Redis and validates what it finds. It writes nothing: every change goes through the
 * command layer (src/control/), the one writer of rollout state.
 */
export class RolloutStore {
  readonly keys: RolloutKeys
  readonly #redis: RedisClient
  readonly #initialPercent: number
  /** The names of the configured routes: each may have a dial of its own (a reload may change them: setRoutes). */
  routes: readonly string[] = []
  /** The write dial's key, then each route dial's: what the poll reads beside percent and state. */
  otherDialKeys: readonly string[] = []

  constructor (redis: RedisClient, keys: RolloutKeys, options: { initialPercent?: number, routes?: readonly string[] } = {}) {
    this.#redis = redis
    this.keys = keys
    this.#initialPercent = options.initialPercent ?? 0
    this.setRoutes(options.routes ?? [])
  }

  /** The configured route names whose dials are read (a reload of `routes`). */
  setRoutes (routes: readonly string[]): void {
    this.routes = [...routes]
    this.otherDialKeys = [this.keys.writePercent, ...this.routes.map((route) => this.keys.routePercent(route))]
  }

  /** One round trip: every key of the rollout, validated. */
  async read (): Promise<SharedRollout> {
    const k = this.keys
    const results = await this.#redis.pipeline()
      .get(k.percent)
      .get(k.state)
      .hgetall(k.trip)
      .smembersBuffer(k.allow)
      .smembersBuffer(k.deny)
      .get(k.armed)
      .get(k.freeze)
      .mget(...this.otherDialKeys)
      .get(k.wayBack)
      .hgetall(k.fence)
      .exec()
    const invalid: InvalidValue[] = []
    const value = (index: number, key: string): unknown => {
      const [err, result] = results?.[index] ?? [new Error('no reply'), null]
      if (err === null) return result
      if (/WRONGTYPE/.test(err.message)) {
        invalid.push({ key, value: WRONG_TYPE, rule: 'of the Redis type docs/redis-keys.md gives it' })
        return null
      }
      throw err
    }
    const percentText = value(0, k.percent) as string | null
    const stateText = value(1, k.state) as string | null
    const tripHash = value(2, k.trip) as Record<string, string> | null
    const allow = members(value(3, k.allow) as Buffer[] | null, k.allow, invalid)
    const deny = members(value(4, k.deny) as Buffer[] | null, k.deny, invalid)
    const armedText = value(5, k.armed) as string | null
    const freeze = value(6, k.freeze) as string | null
    const otherTexts = (value(7, k.writePercent) as Array<string | null> | null) ?? []

    const found: SharedRollout['found'] = { percent: 'missing', state: 'missing', writePercent: 'missing', wayBack: 'missing', fence: 'missing' }
    const dial = (index: number): { value: number | undefined, source: ValueSource } => {
      const text = otherTexts[index] ?? null
      if (text === null) return { value: undefined, source: 'missing' }
      const parsed = parsePercent(text)
      if (parsed === undefined) invalid.push({ key: this.otherDialKeys[index] as string, value: text, rule: PERCENT_RULE })
      return { value: parsed, source: parsed === undefined ? 'invalid' : 'set' }
    }
    const write = dial(0)
    found.writePercent = write.source
    const routePercent = new Map<string, number>()
    const invalidRoutes: string[] = []
    this.routes.forEach((route, i) => {
      const { value, source } = dial(i + 1)
      if (value !== undefined) routePercent.set(route, value)
      if (source === 'invalid') invalidRoutes.push(route)
    })
    const wayBackText = value(8, k.wayBack) as string | null
    const fenceHash = value(9, k.fence) as Record<string, string> | null

    let wayBack: WayBackMode | undefined
    if (wayBackText !== null) {
      wayBack = parseWayBack(wayBackText)
      found.wayBack = wayBack === undefined ? 'invalid' : 'set'
      if (wayBack === undefined) invalid.push({ key: k.wayBack, value: wayBackText, rule: WAY_BACK_RULE })
    }
    const parsedFence = parseFence(fenceHash)
    if (parsedFence.fence !== undefined) found.fence = 'set'
    if (parsedFence.problem !== undefined) {
      found.fence = 'invalid'
      invalid.push({ key: k.fence, value: parsedFence.problem, rule: FENCE_RULE })
    }
    let percent: number | undefined
    if (percentText !== null) {
      percent = parsePercent(percentText)
      found.percent = percent === undefined ? 'invalid' : 'set'
      if (percent === undefined) invalid.push({ key: k.percent, value: percentText, rule: PERCENT_RULE })
    }
    let state: RolloutStateName | undefined
    if (stateText !== null) {
      state = parseStateName(stateText)
      found.state = state === undefined ? 'invalid' : 'set'
      if (state === undefined) invalid.push({ key: k.state, value: stateText, rule: STATE_RULE })
    }
    const trip = tripHash === null || Object.keys(tripHash).length === 0
      ? undefined
      : { level: tripHash.level ?? '', reason: tripHash.reason ?? '', at: tripHash.at ?? '', by: tripHash.by ?? '' }
    const armedAt = armedText === null || !/^\d{1,16}$/.test(armedText) ? 0 : Number(armedText)
    return {
      percent: percent ?? this.#initialPercent,
      writePercent: write.value,
      routePercent,
      invalidRoutes,
      otherDials: otherDialsOf(otherTexts),
      state: state ?? 'active',
      trip,
      allow,
      deny,
      armedAt,
      freeze,
      wayBack: wayBack ?? 'dual_write',
      fence: parsedFence.fence,
      found,
      raw: { percent: percentText, state: stateText, others: this.otherDialKeys.map((_, i) => otherTexts[i] ?? null) },
      invalid
    }
  }

  /** The members of the allow or deny set, sorted; a key of the wrong Redis type is reported as a bad value. */
  async listMembers (set: 'allow' | 'deny'): Promise<string[]> {
    try {
      return (await this.#redis.smembers(this.keys[set])).sort()
    } catch (err) {
      if (!(err instanceof Error) || !err.message.includes('WRONGTYPE')) throw err
      throw new InvalidValueError(wrongTypeMessage(this.keys[set]), { cause: err })
    }
  }

  /** The signal keys the guards poll (one MGET) and the PTTL of `ttlKeys`, in one round trip. */
  async readSignals (keys: string[], ttlKeys: string[]): Promise<{ values: Array<string | null>, ttls: Map<string, number> }> {
    if (ttlKeys.length === 0) return { values: await this.#redis.mget(...keys), ttls: new Map() }
    const pipeline = this.#redis.pipeline().mget(...keys)
    for (const key of ttlKeys) pipeline.pttl(key)
    const results = await pipeline.exec() ?? []
    for (const [err] of results) if (err !== null) throw err
    const ttls = new Map<string, number>()
    ttlKeys.forEach((key, i) => ttls.set(key, results[i + 1]?.[1] as number))
    return { values: results[0]?.[1] as Array<string | null>, ttls }
  }

  /** The reverse lag key and its PTTL, for a command with no poll of its own (the `dbshift` command). */
  async readReverseLag (): Promise<{ text: string | null, ttlMs: number }> {
    const results = await this.#redis.pipeline().get(this.keys.reverseLagSignal).pttl(this.keys.reverseLagSignal).exec()
    const [[, text], [, ttl]] = results as Array<[Error | null, unknown]> as [[Error | null, string | null], [Error | null, number]]
    return { text, ttlMs: ttl }
  }

  /** The newest audit entries, newest first. */
  async audit (count: number): Promise<AuditEntry[]> {
    const entries = await this.#redis.xrevrange(this.keys.audit, '+', '-', 'COUNT', count)
    return entries.map(([id, flat]) => auditEntry(id, flat))
  }
}

/** An entry of the audit stream as XRANGE or XREAD return it. */
export function auditEntry (id: string, flat: string[]): AuditEntry {
  const fields: Record<string, string> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i] as string] = flat[i + 1] as string
  return { id, fields }
}

/** What is said of an allow or deny key that holds another Redis type than a set. */
export function wrongTypeMessage (key: string): string {
  return `${key} holds a value of the wrong Redis type: it must be a set of user keys; fix or delete it by hand`
}

/** The raw write and route dials as one string (MGET's answer), compared by the poll like dialOf. */
export function otherDialsOf (texts: ReadonlyArray<string | null>): string {
  return texts.map((text) => text ?? '').join('|')
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
