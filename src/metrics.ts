import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from 'prom-client'
import { VERSIONS, type Version } from './routing/decide.ts'

/** Why a request to an upstream failed: the `reason` label of dbshift_upstream_errors_total. */
export const UPSTREAM_ERROR_REASONS = ['refused', 'reset', 'timeout', 'dns', 'tls', 'protocol', 'other'] as const
export type UpstreamErrorReason = typeof UPSTREAM_ERROR_REASONS[number]

export const GUARD_LEVELS = ['L1', 'L2', 'L3', 'manual'] as const
export type GuardLevel = typeof GUARD_LEVELS[number]

export const SHADOW_RESULTS = ['match', 'mismatch', 'error', 'skipped'] as const
export type ShadowResult = typeof SHADOW_RESULTS[number]

/** Latency buckets for a proxy: 1 ms to 10 s. */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/**
 * Every metric dbshift exports; this is the only file that writes a metric name. Labels come from small fixed
 * sets (versions, HTTP status codes, reasons, levels): never from what a client sends.
 */
export class Metrics {
  readonly requests: Counter<'version' | 'code'>
  readonly duration: Histogram<'version'>
  readonly upstreamErrors: Counter<'version' | 'reason'>
  readonly rolloutPercent: Gauge
  readonly rolledBack: Gauge
  readonly guardTrips: Counter<'level'>
  readonly guardThreshold: Gauge<'level'>
  readonly configErrors: Counter
  readonly redisUp: Gauge
  readonly shadow: Counter<'result'>
  readonly l2Paused: Gauge

  /** Label children cached per version and status code, so recording a request is two increments. */
  readonly #requestChildren: Record<Version, Array<Counter.Internal | undefined>> = { legacy: [], migrated: [] }
  readonly #durationChildren: Record<Version, Histogram.Internal<'version'>>

  constructor (registry: Registry, options: { defaultMetrics?: boolean } = {}) {
    const registers = [registry]
    this.requests = new Counter({ name: 'dbshift_requests_total', help: 'Requests answered, by version and HTTP status code.', labelNames: ['version', 'code'], registers })
    this.duration = new Histogram({ name: 'dbshift_request_duration_seconds', help: 'Time from request to the end of the response, by version.', labelNames: ['version'], buckets: DURATION_BUCKETS, registers })
    this.upstreamErrors = new Counter({ name: 'dbshift_upstream_errors_total', help: 'Requests whose upstream failed (refused, reset, timeout, ...), by version and reason.', labelNames: ['version', 'reason'], registers })
    this.rolloutPercent = new Gauge({ name: 'dbshift_rollout_percent', help: 'The rollout percentage in force on this instance.', registers })
    this.rolledBack = new Gauge({ name: 'dbshift_rolled_back', help: '1 while the rollout is rolled back (everyone on legacy), else 0.', registers })
    this.guardTrips = new Counter({ name: 'dbshift_guard_trips_total', help: 'Automatic or manual rollbacks and guard actions, by level.', labelNames: ['level'], registers })
    this.guardThreshold = new Gauge({ name: 'dbshift_guard_threshold', help: 'The threshold in force for each guard level (error ratio, load or mismatch ratio).', labelNames: ['level'], registers })
    this.configErrors = new Counter({ name: 'dbshift_config_errors_total', help: 'Invalid values found in Redis and ignored.', registers })
    this.redisUp = new Gauge({ name: 'dbshift_redis_up', help: '1 while Redis is reachable from this instance, else 0.', registers })
    this.shadow = new Counter({ name: 'dbshift_shadow_total', help: 'Shadow comparisons between versions, by result.', labelNames: ['result'], registers })
    this.l2Paused = new Gauge({ name: 'dbshift_l2_paused', help: '1 while the L2 guard pauses the new-feature routes and freezes the ramp, else 0.', registers })

    for (const version of VERSIONS) {
      for (const reason of UPSTREAM_ERROR_REASONS) this.upstreamErrors.labels(version, reason)
      this.duration.labels(version)
    }
    for (const level of GUARD_LEVELS) this.guardTrips.labels(level)
    for (const result of SHADOW_RESULTS) this.shadow.labels(result)
    this.#durationChildren = { legacy: this.duration.labels('legacy'), migrated: this.duration.labels('migrated') }
    this.redisUp.set(0)
    this.l2Paused.set(0)
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry })
  }

  /** Counts one answered request. Called on the hot path: no label lookups after the first of each code. */
  recordRequest (version: Version, status: number, seconds: number): void {
    const code = status >= 100 && status <= 599 ? status : 0 // bounded: any other value is labelled "other"
    const children = this.#requestChildren[version]
    let child = children[code]
    if (child === undefined) {
      child = this.requests.labels(version, code === 0 ? 'other' : String(code))
      children[code] = child
    }
    child.inc()
    this.#durationChildren[version].observe(seconds)
  }
}
