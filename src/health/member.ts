import { Client, Pool } from 'undici'
import type { PoolConfig } from '../config.ts'

export type HealthCheckRules = NonNullable<PoolConfig['healthCheck']>
export type OutlierRules = PoolConfig['outlier']

/** Why a member stopped or started taking new requests. */
export interface MemberChange {
  member: Member
  serving: boolean
  why: string
}

/** What /status shows of one member. */
export interface MemberStatus {
  member: string
  healthy: boolean
  /** `up` / `down` by the active checks, `off` without them. */
  check: 'up' | 'down' | 'off'
  lastCheck: { at: string, ok: boolean, detail: string } | null
  ejectedUntil: string | null
  ejections: number
}

/** The members of one pool, the rules they are judged by, and the one place a member's state changes. */
export class MemberGroup {
  readonly members: Member[] = []
  readonly healthCheck: HealthCheckRules | undefined
  readonly outlier: OutlierRules
  readonly #now: () => number
  readonly #onChange: (change: MemberChange) => void

  constructor (rules: { healthCheck?: HealthCheckRules, outlier: OutlierRules }, now: () => number, onChange: (change: MemberChange) => void) {
    this.healthCheck = rules.healthCheck
    this.outlier = rules.outlier
    this.#now = now
    this.#onChange = onChange
  }

  add (name: string, origin: string, options: Pool.Options, state?: MemberStatus): Member {
    const member = new Member(this, name, origin, new Pool(origin, options), this.#now)
    // A member that a reload keeps keeps what its checks found: a dead pool stays dead across a reload.
    if (state !== undefined && state.check === 'down' && this.healthCheck !== undefined) member.restoreDown(state)
    this.members.push(member)
    return member
  }

  /** Members that take new requests now. */
  get serving (): number {
    let n = 0
    for (const member of this.members) if (member.serving) n++
    return n
  }

  /**
   * Whether one more member may be ejected: at most maxEjectedPercent of the pool (at least one, as in Envoy),
   * and never the last member that takes requests.
   */
  mayEject (): boolean {
    const ejected = this.members.filter((member) => member.ejected).length
    const allowed = Math.max(1, Math.floor(this.members.length * this.outlier.maxEjectedPercent / 100))
    return ejected < allowed && this.serving > 1
  }

  changed (member: Member, why: string): void {
    this.#onChange({ member, serving: member.serving, why })
  }
}

/** One pool member: its undici Pool (a host name is resolved as each connection is made) and its health. */
export class Member {
  readonly name: string
  readonly origin: string
  readonly pool: Pool
  readonly #group: MemberGroup
  readonly #now: () => number
  readonly #listeners: Array<() => void> = []
  #up = true
  #passes = 0
  #fails = 0
  #errors = 0
  #ejectedUntil = 0
  #ejections = 0
  #ejectTimer: NodeJS.Timeout | undefined
  #checkTimer: NodeJS.Timeout | undefined
  #checkClient: Client | undefined
  #lastCheck: MemberStatus['lastCheck'] = null
  #closed = false

  constructor (group: MemberGroup, name: string, origin: string, pool: Pool, now: () => number) {
    this.#group = group
    this.name = name
    this.origin = origin
    this.pool = pool
    this.#now = now
  }

  /** Takes new requests: its checks pass (or there are none) and it is not ejected. */
  get serving (): boolean {
    return this.#up && this.#ejectedUntil === 0
  }

  get ejected (): boolean {
    return this.#ejectedUntil !== 0
  }

  onChange (listener: () => void): void {
    this.#listeners.push(listener)
  }

  /** An answer below 500 (hot path: one comparison in the usual case). */
  succeeded (): void {
    if (this.#errors !== 0) this.#errors = 0
  }

  /** A 5xx answer or a transport failure: enough in a row eject the member for outlier.ejectMs. */
  failed (): void {
    const rules = this.#group.outlier
    if (rules.consecutiveErrors === 0 || this.#ejectedUntil !== 0) return
    if (++this.#errors < rules.consecutiveErrors || !this.#group.mayEject()) return
    this.#ejectedUntil = this.#now() + rules.ejectMs
    this.#ejections++
    this.#ejectTimer = setTimeout(() => {
      this.#ejectedUntil = 0
      this.#errors = 0
      this.#change(`ejection of ${rules.ejectMs} ms ended`)
    }, rules.ejectMs).unref()
    this.#change(`${this.#errors} errors in a row (outlier.consecutiveErrors ${rules.consecutiveErrors}); ejected for ${rules.ejectMs} ms`)
  }

  /** Starts the active checks: the first at once, then every healthCheck.intervalMs. */
  startChecks (): void {
    const rules = this.#group.healthCheck
    if (rules === undefined || this.#closed || this.#checkTimer !== undefined) return
    this.#checkClient = new Client(this.origin, { headersTimeout: rules.timeoutMs, bodyTimeout: rules.timeoutMs, connect: { timeout: rules.timeoutMs }, keepAliveTimeout: rules.intervalMs * 2 })
    const run = (): void => {
      this.#check(rules).finally(() => {
        if (!this.#closed) this.#checkTimer = setTimeout(run, rules.intervalMs).unref()
      })
    }
    this.#checkTimer = setTimeout(run, 0).unref()
  }

  close (): void {
    this.#closed = true
    clearTimeout(this.#checkTimer)
    clearTimeout(this.#ejectTimer)
    this.#checkClient?.destroy().catch(() => {})
  }

  status (): MemberStatus {
    return {
      member: this.name,
      healthy: this.serving,
      check: this.#group.healthCheck === undefined ? 'off' : this.#up ? 'up' : 'down',
      lastCheck: this.#lastCheck,
      ejectedUntil: this.#ejectedUntil === 0 ? null : new Date(this.#ejectedUntil).toISOString(),
      ejections: this.#ejections
    }
  }

  /** @internal a member a reload keeps starts as its checks left it. */
  restoreDown (state: MemberStatus): void {
    this.#up = false
    this.#lastCheck = state.lastCheck
  }

  async #check (rules: HealthCheckRules): Promise<void> {
    let ok = false
    let detail: string
    try {
      const res = await (this.#checkClient as Client).request({ path: rules.path, method: 'GET', headers: { 'user-agent': 'dbshift-health-check' }, signal: AbortSignal.timeout(rules.timeoutMs) })
      await res.body.dump()
      ok = res.statusCode >= 200 && res.statusCode < 400
      detail = `GET ${rules.path} answered ${res.statusCode}`
    } catch (err) {
      const { code, message } = err as Error & { code?: string }
      detail = `GET ${rules.path} failed: ${code ?? message}`
    }
    if (this.#closed) return
    this.#lastCheck = { at: new Date(this.#now()).toISOString(), ok, detail }
    if (ok) {
      this.#fails = 0
      if (!this.#up && ++this.#passes >= rules.healthyAfter) {
        this.#up = true
        this.#passes = 0
        this.#change(`${rules.healthyAfter} health check${rules.healthyAfter === 1 ? '' : 's'} in a row passed (${detail})`)
      }
    } else {
      this.#passes = 0
      if (this.#up && ++this.#fails >= rules.unhealthyAfter) {
        this.#up = false
        this.#fails = 0
        this.#change(`${rules.unhealthyAfter} health check${rules.unhealthyAfter === 1 ? '' : 's'} in a row failed (${detail})`)
      }
    }
  }

  #change (why: string): void {
    for (const listener of this.#listeners) listener()
    this.#group.changed(this, why)
  }
}
