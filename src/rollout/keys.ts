/**
 * Every Redis key and channel of one rollout: the only place their names are written.
 * The `{name}` hash tag keeps one rollout's keys in one Redis Cluster slot, so multi-key scripts work there.
 */
export class RolloutKeys {
  readonly percent: string
  /** The write dial: writes are migrated below min(write_percent, percent); missing = the same as percent. */
  readonly writePercent: string
  readonly state: string
  readonly trip: string
  readonly allow: string
  readonly deny: string
  readonly events: string
  readonly audit: string
  /** Set by the L2 guard while the ramp is frozen; a raise of the percentage is refused while it exists. */
  readonly freeze: string
  /** When a resume last re-armed the guards (ms): an instance that starts later judges only what came after it. */
  readonly armed: string
  /** The L2 load signal in 0..1, written by a database monitor. */
  readonly dbLoadSignal: string
  /** The L3 external signal: any non-empty value other than 0 means "the data is inconsistent". */
  readonly inconsistentSignal: string
  /** A hash of instance id → JSON heartbeat; each field carries its own expiry in the value. */
  readonly instances: string
  /** How the data gets back to legacy on a rollback: dual_write (missing), reverse_sync or none. */
  readonly wayBack: string
  /** How many seconds the reverse sync (migrated → legacy) is behind, written by the team's monitor with an expiry. */
  readonly reverseLagSignal: string
  /** The id of the fence whose data the data-rollback job (started by the L3 webhook) has restored. */
  readonly dataRestoredSignal: string
  /** A hash (id, level, reason, at, deadline, percent, held) present while the moving cohort's writes are fenced. */
  readonly fence: string
  readonly schedule: string
  readonly scheduleLease: string

  readonly #base: string

  constructor (prefix: string, readonly name: string) {
    this.#base = `${prefix}:{${name}}`
    this.percent = `${this.#base}:percent`
    this.writePercent = `${this.#base}:write_percent`
    this.state = `${this.#base}:state`
    this.trip = `${this.#base}:trip`
    this.allow = `${this.#base}:allow`
    this.deny = `${this.#base}:deny`
    this.events = `${this.#base}:events`
    this.audit = `${this.#base}:audit`
    this.freeze = `${this.#base}:freeze`
    this.armed = `${this.#base}:armed`
    this.dbLoadSignal = `${this.#base}:signal:db_load`
    this.inconsistentSignal = `${this.#base}:signal:inconsistent`
    this.instances = `${this.#base}:instances`
    this.wayBack = `${this.#base}:way_back`
    this.reverseLagSignal = `${this.#base}:signal:reverse_lag`
    this.dataRestoredSignal = `${this.#base}:signal:data_restored`
    this.fence = `${this.#base}:fence`
    this.schedule = `${this.#base}:schedule`
    this.scheduleLease = `${this.#base}:schedule:lease`
  }

  /** A route's own dial (`routes` in the config): replaces `percent` for that route's reads. */
  routePercent (route: string): string {
    return `${this.#base}:route:${route}:percent`
  }

  /** Claimed (SET NX, expiring) by the one instance that audits a hand-made change; `id` names the change. */
  handChange (id: string): string {
    return `${this.#base}:hand:${id}`
  }

  /** The pattern of every rollout's fleet view under `prefix`: which rollouts have live instances. */
  static instancesPattern (prefix: string): string {
    return `${prefix}:{*}:instances`
  }

  /** Fleet-wide traffic counts of one version in one time slot (L1 guard), expiring. */
  traffic (version: string, slot: number | string): string {
    return `${this.#base}:traffic:${version}:${slot}`
  }
}
