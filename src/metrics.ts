import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from 'prom-client'
import { readThreshold, VERSIONS, writeThreshold, type RoutingState, type Version } from './routing/decide.ts'
import { DEFAULT_ROUTE_NAME, REQUEST_CLASSES, type RequestClass, type Route } from './routing/routes.ts'
import { WAY_BACK_MODES } from './rollout/values.ts'

/** Why a request to an upstream failed: the `reason` label of dbshift_upstream_errors_total. */
export const UPSTREAM_ERROR_REASONS = ['refused', 'reset', 'timeout', 'dns', 'tls', 'protocol', 'other'] as const
export type UpstreamErrorReason = typeof UPSTREAM_ERROR_REASONS[number]

/** Why dbshift answered a request itself: the `reason` label of dbshift_refused_total. */
export const REFUSED_REASONS = [
  'overloaded', 'bad_request', 'uri_too_long', 'headers_too_large', 'request_timeout', 'fenced', 'paused',
  'asterisk', 'local_error', 'shutting_down'
] as const
export type RefusedReason = typeof REFUSED_REASONS[number]

export const GUARD_LEVELS = ['L1', 'L2', 'L3', 'manual'] as const
export type GuardLevel = typeof GUARD_LEVELS[number]

/** The background work of an instance: the `task` label of dbshift_background_errors_total. */
export const BACKGROUND_TASKS = ['rollout_poll', 'heartbeat', 'l1_evaluation', 'signal_poll', 'l2_prometheus', 'schedule', 'notify'] as const
export type BackgroundTask = typeof BACKGROUND_TASKS[number]
/** What a long-lived connection is: the `kind` label of dbshift_open_connections. */
export const CONNECTION_KINDS = ['websocket', 'stream'] as const
export type ConnectionKind = typeof CONNECTION_KINDS[number]

export const SHADOW_RESULTS = ['match', 'mismatch', 'error', 'skipped'] as const
export type ShadowResult = typeof SHADOW_RESULTS[number]

/** Latency buckets for a proxy: 1 ms to 10 s. */
export const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/**
 * prom-client's default metrics whose names break the Prometheus naming rules (gauges ending in `_total`), so
 * `promtool check metrics` refuses them. They are sums of nodejs_active_handles{type} and friends, which stay.
 */
const MISNAMED_DEFAULT_METRICS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']

/** The largest HTTP status code kept as its own `code` label; anything else is labelled `other`. */
const MAX_STATUS = 599

/** What prom-client 15 keeps per histogram child (lib/histogram.js createBaseValues); there is no bulk observe. */
interface HistogramEntry {
  labels: Record<string, string>
  bucketValues: Record<number, number>
  sum: number
  count: number
}

/** Where a (route, version, class) is counted: four slots per route, the default route first. */
function routeSlot (route: number, version: Version, cls: RequestClass): number {
  return ((route + 1) << 2) | (version === 'migrated' ? 2 : 0) | (cls === 'write' ? 1 : 0)
}

/** Answered requests of one version not yet handed to prom-client: plain array increments on the hot path. */
class PendingRequests {
  readonly byStatus = new Float64Array(MAX_STATUS + 1)
  readonly byBucket = new Float64Array(DURATION_BUCKETS.length + 1)
  sum = 0
  count = 0
}

/**
 * Every metric dbshift exports; this is the only file that writes a metric name. Labels come from small fixed
 * sets (versions, HTTP status codes, reasons, levels): never from what a client sends.
 */
export class Metrics {
  readonly requests: Counter<'version' | 'code'>
  readonly duration: Histogram<'version'>
  readonly upstreamErrors: Counter<'version' | 'reason'>
  readonly rolloutPercent: Gauge
  readonly rolloutWritePercent: Gauge
  readonly routePercent: Gauge<'route'>
  readonly rolledBack: Gauge
  readonly guardTrips: Counter<'level'>
  readonly guardThreshold: Gauge<'level'>
  readonly configErrors: Counter
  readonly redisUp: Gauge
  readonly shadow: Counter<'result'>
  readonly l2Paused: Gauge
  readonly guardDryRuns: Counter<'level'>
  readonly upstreamHealthy: Gauge<'version' | 'member'>
  readonly configReloadFailures: Counter
  readonly backgroundErrors: Counter<'task'>
  readonly openConnections: Gauge<'version' | 'kind'>
  readonly connectionsMoved: Counter<'version'>
  readonly routeRequests: Counter<'route' | 'version' | 'class'>
  readonly refused: Counter<'reason'>
  readonly wayBack: Gauge<'mode'>
  readonly reverseLag: Gauge
  readonly rollbackSafe: Gauge
  readonly writesFenced: Gauge
  readonly fencedRequests: Counter
  readonly rollbackUnsafe: Counter

  /**
   * Requests are counted here and handed to prom-client when it collects (at each scrape): a request costs a
   * few array increments instead of two label lookups.
   */
  readonly #pending: Record<Version, PendingRequests> = { legacy: new PendingRequests(), migrated: new PendingRequests() }
  /** The `route` label of each route index + 1 (index 0 is the default route): only names from the config. */
  #routeNames: readonly string[]
  /** Requests per (route, version, class) not yet handed to prom-client; see #routeSlot. */
  #pendingRoutes: Float64Array
  /** The children of dbshift_refused_total, looked up once: shedding under load costs no label lookup. */
  readonly #refusedBy = {} as Record<RefusedReason, { inc: () => void }>

  /** `routes`: the names of the configured routes, in order (the route table's indexes). */
  constructor (registry: Registry, options: { defaultMetrics?: boolean, routes?: readonly string[] } = {}) {
    const registers = [registry]
    // `aggregator`: how the primary adds up workers' gauges (workers > 1); counters and histograms are summed.
    this.requests = new Counter({
      name: 'dbshift_requests_total',
      help: 'Requests answered, by version and HTTP status code.',
      labelNames: ['version', 'code'],
      registers,
      collect: () => this.#flushRequests()
    })
    this.duration = new Histogram({
      name: 'dbshift_request_duration_seconds',
      help: 'Time from request to the end of the response, by version.',
      labelNames: ['version'],
      buckets: DURATION_BUCKETS,
      registers,
      collect: () => this.#flushDurations()
    })
    this.upstreamErrors = new Counter({ name: 'dbshift_upstream_errors_total', help: 'Requests whose upstream failed (refused, reset, timeout, ...), by version and reason.', labelNames: ['version', 'reason'], registers })
    this.rolloutPercent = new Gauge({ name: 'dbshift_rollout_percent', help: 'The rollout percentage in force on this instance.', registers, aggregator: 'max' })
    this.rolloutWritePercent = new Gauge({ name: 'dbshift_rollout_write_percent', help: 'The write dial in force on this instance: min(write_percent, percent), percent while write_percent is missing.', registers, aggregator: 'max' })
    this.routePercent = new Gauge({ name: 'dbshift_rollout_route_percent', help: 'The share of a configured route\'s reads sent to migrated on this instance: its dial (or percent), never below the write dial; 0 or 100 for a legacy or migrated route.', labelNames: ['route'], registers, aggregator: 'max' })
    this.rolledBack = new Gauge({ name: 'dbshift_rolled_back', help: '1 while the rollout is rolled back (everyone on legacy), else 0.', registers, aggregator: 'max' })
    this.guardTrips = new Counter({ name: 'dbshift_guard_trips_total', help: 'Automatic or manual rollbacks and guard actions, by level.', labelNames: ['level'], registers })
    this.guardThreshold = new Gauge({ name: 'dbshift_guard_threshold', help: 'The threshold in force for each guard level (error ratio, load or mismatch ratio; 0 = disabled).', labelNames: ['level'], registers, aggregator: 'first' })
    this.configErrors = new Counter({ name: 'dbshift_config_errors_total', help: 'Invalid values found in Redis and ignored.', registers })
    this.redisUp = new Gauge({ name: 'dbshift_redis_up', help: '1 while Redis accepts this instance\'s commands; 0 while it is unreachable or refuses them (see /status).', registers, aggregator: 'min' })
    this.shadow = new Counter({ name: 'dbshift_shadow_total', help: 'Shadow comparisons between versions, by result.', labelNames: ['result'], registers })
    this.l2Paused = new Gauge({ name: 'dbshift_l2_paused', help: '1 while the L2 guard pauses the new-feature routes and freezes the ramp, else 0.', registers, aggregator: 'max' })
    this.backgroundErrors = new Counter({ name: 'dbshift_background_errors_total', help: 'Failed runs of background work (polls, heartbeats, guard evaluations, the schedule runner, notifications), by task.', labelNames: ['task'], registers })
    this.guardDryRuns = new Counter({ name: 'dbshift_guard_dry_run_trips_total', help: 'Trips a guard in dry-run mode would have made (logged, not acted on), by level.', labelNames: ['level'], registers })
    this.#routeNames = [DEFAULT_ROUTE_NAME, ...(options.routes ?? [])]
    this.#pendingRoutes = new Float64Array(this.#routeNames.length * VERSIONS.length * REQUEST_CLASSES.length)
    this.routeRequests = new Counter({
      name: 'dbshift_route_requests_total',
      help: 'Requests routed, by configured route (default: no route matched), version and class (read or write).',
      labelNames: ['route', 'version', 'class'],
      registers,
      collect: () => this.#flushRoutes()
    })
    this.refused = new Counter({ name: 'dbshift_refused_total', help: 'Requests dbshift answered itself without an upstream (shed, malformed, too large, paused, ...), by reason.', labelNames: ['reason'], registers })

    this.openConnections = new Gauge({ name: 'dbshift_open_connections', help: 'Open long-lived connections (upgraded WebSockets, event streams), by version and kind.', labelNames: ['version', 'kind'], registers, aggregator: 'sum' })
    this.connectionsMoved = new Counter({ name: 'dbshift_connections_moved_total', help: 'Long-lived connections closed because their user now gets the other version, by the version they were on.', labelNames: ['version'], registers })

    this.upstreamHealthy = new Gauge({ name: 'dbshift_upstream_healthy', help: '1 while a pool member takes new requests (its health checks pass and it is not ejected), else 0; member as configured.', labelNames: ['version', 'member'], registers, aggregator: 'min' })
    this.configReloadFailures = new Counter({ name: 'dbshift_config_reload_failures_total', help: 'Reloads (SIGHUP, POST /reload) refused because the new configuration was invalid; the running one was kept.', registers })

    this.wayBack = new Gauge({ name: 'dbshift_way_back', help: 'The way back in force (1 for its mode): dual_write, reverse_sync or none.', labelNames: ['mode'], registers, aggregator: 'max' })
    this.reverseLag = new Gauge({ name: 'dbshift_reverse_lag_seconds', help: 'How far behind the reverse sync (migrated to legacy) is, as of now; NaN while unknown.', registers, aggregator: 'max' })
    this.rollbackSafe = new Gauge({ name: 'dbshift_rollback_safe', help: '1 when a rollback now would lose no write, else 0.', registers, aggregator: 'min' })
    this.writesFenced = new Gauge({ name: 'dbshift_writes_fenced', help: '1 while the moving cohort\'s writes are fenced (503), else 0.', registers, aggregator: 'max' })
    this.fencedRequests = new Counter({ name: 'dbshift_fenced_requests_total', help: 'Writes answered 503 because the fence held them.', registers })
    this.rollbackUnsafe = new Counter({ name: 'dbshift_rollback_unsafe_total', help: 'Fences released on timeout before the reverse sync caught up: writes may be missing on legacy.', registers })

    // Series that exist from the start, at 0, so that rate() and alerts see the first failure as an increase.
    for (const version of VERSIONS) {
      for (const reason of UPSTREAM_ERROR_REASONS) this.upstreamErrors.labels(version, reason).inc(0)
      this.duration.zero({ version })
      for (const kind of CONNECTION_KINDS) this.openConnections.labels(version, kind).set(0)
      this.connectionsMoved.labels(version).inc(0)
    }
    for (const level of GUARD_LEVELS) this.guardTrips.labels(level).inc(0)
    for (const level of GUARD_LEVELS) if (level !== 'manual') this.guardDryRuns.labels(level).inc(0)
    for (const result of SHADOW_RESULTS) this.shadow.labels(result).inc(0)
    for (const task of BACKGROUND_TASKS) this.backgroundErrors.labels(task).inc(0)
    for (const route of this.#routeNames) for (const version of VERSIONS) for (const cls of REQUEST_CLASSES) this.routeRequests.labels(route, version, cls).inc(0)
    for (const reason of REFUSED_REASONS) {
      const child = this.refused.labels(reason)
      child.inc(0)
      this.#refusedBy[reason] = child
    }
    this.rolloutPercent.set(0)
    this.rolloutWritePercent.set(0)
    for (const route of options.routes ?? []) this.routePercent.labels(route).set(0)
    this.rolledBack.set(0)
    this.redisUp.set(0)
    this.l2Paused.set(0)
    this.configReloadFailures.inc(0)
    for (const mode of WAY_BACK_MODES) this.wayBack.labels(mode).set(mode === 'dual_write' ? 1 : 0)
    this.reverseLag.set(Number.NaN)
    this.rollbackSafe.set(1)
    this.writesFenced.set(0)
    this.fencedRequests.inc(0)
    this.rollbackUnsafe.inc(0)
    if (options.defaultMetrics !== false) {
      collectDefaultMetrics({ register: registry })
      for (const name of MISNAMED_DEFAULT_METRICS) registry.removeSingleMetric(name)
    }
  }

  /** Shows the dials in force (the percentage, the write dial, each route's): called when the rollout changes. */
  showDials (state: RoutingState, routes: readonly Route[]): void {
    const writes = writeThreshold(state)
    this.rolloutPercent.set(state.percent)
    this.rolloutWritePercent.set(writes / 100)
    for (const route of routes) {
      this.routePercent.labels(route.name).set(route.mode === 'split' ? readThreshold(state, route, writes) / 100 : route.mode === 'migrated' ? 100 : 0)
    }
  }

  /** Counts one answered request. Called on the hot path: array increments only, no allocation, no lookup. */
  recordRequest (version: Version, status: number, seconds: number): void {
    if (!(seconds >= 0)) seconds = 0 // NaN or a clock step back: never poison the sum
    const pending = this.#pending[version]
    pending.byStatus[status >= 100 && status <= MAX_STATUS ? status : 0]++ // 0 stands for "other": labels stay bounded
    let i = 0
    while (i < DURATION_BUCKETS.length && seconds > (DURATION_BUCKETS[i] as number)) i++
    pending.byBucket[i]++
    pending.sum += seconds
    pending.count++
  }

  /**
   * Counts one routed request: `route` is the route table's index (-1 for the default route). On the hot path:
   * one array increment.
   */
  recordRoute (route: number, version: Version, cls: RequestClass): void {
    const slot = routeSlot(route, version, cls)
    if (slot >= 0 && slot < this.#pendingRoutes.length) this.#pendingRoutes[slot]++
  }

  /**
   * A reload changed `routes`: what was counted is handed over under the old names, then the indexes name the new
   * routes. A new route's series start at 0; a removed route's series stay with their last counts.
   */
  setRoutes (routes: readonly string[]): void {
    this.#flushRoutes()
    this.#routeNames = [DEFAULT_ROUTE_NAME, ...routes]
    this.#pendingRoutes = new Float64Array(this.#routeNames.length * VERSIONS.length * REQUEST_CLASSES.length)
    for (const route of this.#routeNames) for (const version of VERSIONS) for (const cls of REQUEST_CLASSES) this.routeRequests.labels(route, version, cls).inc(0)
  }

  #flushRoutes (): void {
    const pending = this.#pendingRoutes
    for (let slot = 0; slot < pending.length; slot++) {
      const n = pending[slot] as number
      if (n === 0) continue
      const route = this.#routeNames[slot >> 2] as string
      this.routeRequests.labels(route, VERSIONS[(slot >> 1) & 1] as Version, REQUEST_CLASSES[slot & 1] as RequestClass).inc(n)
      pending[slot] = 0
    }
  }

  /** Counts one request dbshift answered itself. */
  recordRefused (reason: RefusedReason): void {
    this.#refusedBy[reason].inc()
  }

  #flushRequests (): void {
    for (const version of VERSIONS) {
      const byStatus = this.#pending[version].byStatus
      for (let status = 0; status <= MAX_STATUS; status++) {
        const n = byStatus[status] as number
        if (n === 0) continue
        this.requests.labels(version, status === 0 ? 'other' : String(status)).inc(n)
        byStatus[status] = 0
      }
    }
  }

  #flushDurations (): void {
    for (const version of VERSIONS) {
      const pending = this.#pending[version]
      if (pending.count === 0) continue
      const entry = this.#durationEntry(version)
      for (let i = 0; i < DURATION_BUCKETS.length; i++) {
        const bound = DURATION_BUCKETS[i] as number
        entry.bucketValues[bound] = (entry.bucketValues[bound] ?? 0) + (pending.byBucket[i] as number)
      }
      entry.sum += pending.sum
      entry.count += pending.count
      pending.byBucket.fill(0)
      pending.sum = 0
      pending.count = 0
    }
  }

  /**
   * The stored child of one version. prom-client 15 keeps each child's non-cumulative bucket counts, sum and
   * count in `hashMap` and has no bulk observe; the observability tests read the exported buckets back, so a
   * change of that layout fails them.
   */
  #durationEntry (version: Version): HistogramEntry {
    const find = (): HistogramEntry | undefined => {
      const hashMap = (this.duration as unknown as { hashMap: Record<string, HistogramEntry> }).hashMap
      return Object.values(hashMap).find((entry) => entry.labels.version === version)
    }
    const found = find()
    if (found !== undefined) return found
    this.duration.zero({ version }) // after a registry reset
    return find() as HistogramEntry
  }
}
