import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { Metrics } from '../metrics.ts'
import type { Pools } from '../proxy/pools.ts'
import { redactUrl } from '../redact.ts'
import { VERSIONS, type Version } from '../routing/decide.ts'
import type { RolloutSnapshot } from '../rollout/snapshot.ts'
import type { MemberChange, MemberStatus } from './member.ts'

/** A pool's health in the heartbeat, kept small: how many members take requests, and the names of those that do not. */
export interface PoolSummary {
  members: number
  healthy: number
  /** The members that take no new requests, as configured without credentials (at most MAX_DOWN_NAMES). */
  down: string[]
}

/** The most member names a heartbeat carries per pool: a large pool's beat stays small. */
export const MAX_DOWN_NAMES = 10

export interface PoolHealthOptions {
  metrics: Metrics
  log: Logger
  now: () => number
  rollout: () => RolloutSnapshot
  /** The L1 rules in force (a reload may change them). */
  rules: () => Config['guards']['l1']
  /** Trips L1 (or, in dry run, says it would have); called once per outage of the migrated pool. */
  trip: (reason: string) => void
}

/**
 * The health of both pools as the proxy sees it: each member's state in dbshift_upstream_healthy, /status and
 * one log line per change; whether the migrated pool has a healthy member (the raise gate); and the L1 trip
 * when, above 0%, it has had none for guards.l1.unhealthyPoolMs.
 */
export class PoolHealth extends EventEmitter<{ change: [version: Version, change: MemberChange] }> {
  readonly #o: PoolHealthOptions
  #pools: Pools | undefined
  #unhealthySince = 0
  #tripped = false
  #timer: NodeJS.Timeout | undefined

  constructor (options: PoolHealthOptions) {
    super()
    this.#o = options
  }

  /** The change handler to give createPools. */
  readonly onChange = (version: Version, change: MemberChange): void => {
    const { member, serving, why } = change
    // A member a reload replaced may still see its last answers: it no longer counts.
    if (this.#pools !== undefined && !this.#pools[version].health.members.includes(member)) return
    this.#o.metrics.upstreamHealthy.labels(version, member.name).set(serving ? 1 : 0)
    const detail = { version, member: member.name, healthy: serving, why }
    if (serving) this.#o.log.info(detail, `${version} pool member ${member.name} takes requests again: ${why}`)
    else this.#o.log.warn(detail, `${version} pool member ${member.name} takes no new requests: ${why}`)
    if (version === 'migrated') this.#watch()
    this.emit('change', version, change)
  }

  /**
   * Follows these pools from now on (at start, and after a reload, which names the pools it replaced: their
   * checks stop, and the series of members that are gone are removed); the checks of both pools start at once.
   */
  attach (pools: Pools, before?: Pools): void {
    this.#pools = pools
    for (const version of VERSIONS) {
      const names = new Set(pools[version].health.members.map((member) => member.name))
      for (const member of before?.[version].health.members ?? []) {
        member.close()
        if (!names.has(member.name)) this.#o.metrics.upstreamHealthy.remove(version, member.name)
      }
      for (const member of pools[version].health.members) {
        this.#o.metrics.upstreamHealthy.labels(version, member.name).set(member.serving ? 1 : 0)
        member.startChecks()
      }
    }
    this.#watch()
  }

  /** The raise gate: false while no member of the migrated pool takes requests. */
  migratedHealthy (): boolean {
    return this.#pools === undefined || this.#pools.migrated.health.serving > 0
  }

  /** Each member's state, by version. */
  status (): Record<Version, MemberStatus[]> {
    const of = (version: Version): MemberStatus[] => this.#pools?.[version].health.members.map((member) => member.status()) ?? []
    return { legacy: of('legacy'), migrated: of('migrated') }
  }

  /** Each pool's health in brief, for the heartbeat (the fleet view, `dbshift status`). */
  summary (): Record<Version, PoolSummary> {
    const of = (version: Version): PoolSummary => {
      const members = this.#pools?.[version].health.members ?? []
      const down = members.filter((member) => !member.serving)
      return { members: members.length, healthy: members.length - down.length, down: down.slice(0, MAX_DOWN_NAMES).map((member) => redactUrl(member.name)) }
    }
    return { legacy: of('legacy'), migrated: of('migrated') }
  }

  /** Every member's state keyed `<version> <member>`, for a reload to carry over. */
  snapshot (): Map<string, MemberStatus> {
    const states = new Map<string, MemberStatus>()
    for (const version of VERSIONS) for (const status of this.status()[version]) states.set(`${version} ${status.member}`, status)
    return states
  }

  close (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Starts or stops the outage clock of the migrated pool. */
  #watch (): void {
    if (this.migratedHealthy()) {
      this.#unhealthySince = 0
      this.#tripped = false
      this.close()
      return
    }
    if (this.#unhealthySince === 0) this.#unhealthySince = this.#o.now()
    this.#arm()
  }

  #arm (): void {
    if (this.#timer !== undefined) return
    const rules = this.#o.rules()
    // A raise (by hand in Redis, say) onto a pool that is already dead is caught within a second.
    const wait = Math.max(0, Math.min(1_000, this.#unhealthySince + rules.unhealthyPoolMs - this.#o.now()))
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      this.#evaluate()
      if (!this.migratedHealthy()) this.#arm()
    }, wait).unref()
  }

  #evaluate (): void {
    const rules = this.#o.rules()
    const rollout = this.#o.rollout()
    if (rollout.rolledBack) this.#tripped = false // after a resume, a pool still dead trips again
    if (this.#tripped || !rules.enabled || rollout.rolledBack || rollout.percent <= 0) return
    const downMs = this.#o.now() - this.#unhealthySince
    if (downMs < rules.unhealthyPoolMs) return
    this.#tripped = true
    this.#o.trip(`the migrated pool has had no healthy member for ${Math.round(downMs / 100) / 10} s (guards.l1.unhealthyPoolMs ${rules.unhealthyPoolMs})`)
  }
}
