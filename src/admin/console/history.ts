import type { Histogram } from 'prom-client'
import { VERSIONS, type Version } from '../../routing/decide.ts'
import type { TrafficWindow } from '../../traffic/window.ts'

/** One version over one sample interval: requests per second, the error ratio (0 … 1), and p99 latency in ms. */
export interface VersionPoint {
  rps: number
  errorRate: number
  /** null when the version answered nothing in the interval. */
  p99Ms: number | null
}

export interface HistoryPoint {
  /** End of the interval (ms). */
  at: number
  legacy: VersionPoint
  migrated: VersionPoint
}

export interface HistoryOptions {
  traffic: TrafficWindow
  duration: Histogram<'version'>
  now: () => number
  /** Width of one point (default 10 s). */
  sampleMs?: number
  /** How far back the ring reaches (default one hour). */
  spanMs?: number
}

export const DEFAULT_SAMPLE_MS = 10_000
export const DEFAULT_SPAN_MS = 3_600_000

/**
 * An hour of per-version rate, error rate and p99, one point per sample interval, kept in process for the console.
 * It reads what the proxy already records (the traffic window and the latency histogram) on its own timer, so the
 * request path does no extra work. Error counts are the traffic window's: the same errors the L1 guard judges.
 */
export class History {
  readonly sampleMs: number
  readonly spanMs: number
  readonly #options: HistoryOptions
  readonly #points: HistoryPoint[] = []
  /** The histogram's cumulative bucket counts at the last sample, per version. */
  #buckets: Record<Version, Map<string, number>> | undefined
  #lastAt = 0

  constructor (options: HistoryOptions) {
    this.#options = options
    this.sampleMs = options.sampleMs ?? DEFAULT_SAMPLE_MS
    this.spanMs = options.spanMs ?? DEFAULT_SPAN_MS
  }

  /** Takes a point covering the time since the previous one and keeps it. */
  async sample (): Promise<HistoryPoint> {
    const buckets = await this.#readBuckets()
    const point = this.#point(buckets)
    this.#buckets = buckets
    this.#lastAt = point.at
    this.#points.push(point)
    const oldest = point.at - this.spanMs
    while ((this.#points[0]?.at ?? Infinity) < oldest) this.#points.shift()
    return point
  }

  /** The kept points, then one for the time since the last of them (not kept), so the page is live between samples. */
  async points (): Promise<HistoryPoint[]> {
    const live = this.#point(await this.#readBuckets())
    return live.at > this.#lastAt ? [...this.#points, live] : [...this.#points]
  }

  #point (buckets: Record<Version, Map<string, number>>): HistoryPoint {
    const now = this.#options.now()
    // The first point covers one interval; a late timer (a busy event loop) widens the next, never double-counts.
    const spanMs = Math.max(this.#options.traffic.slotMs, this.#lastAt === 0 ? this.sampleMs : now - this.#lastAt)
    const point = { at: now } as HistoryPoint
    for (const version of VERSIONS) {
      const { requests, errors } = this.#options.traffic.totals(version, spanMs)
      point[version] = {
        rps: round(requests / (spanMs / 1000)),
        errorRate: requests === 0 ? 0 : round(errors / requests),
        p99Ms: p99Ms(buckets[version], this.#buckets?.[version])
      }
    }
    return point
  }

  async #readBuckets (): Promise<Record<Version, Map<string, number>>> {
    const out: Record<Version, Map<string, number>> = { legacy: new Map(), migrated: new Map() }
    const { values } = await this.#options.duration.get()
    for (const value of values) {
      if (value.metricName?.endsWith('_bucket') !== true) continue
      const labels = value.labels as Record<string, string | number | undefined>
      out[labels.version as Version]?.set(String(labels.le), value.value)
    }
    return out
  }
}

/**
 * The 99th percentile of the answers between two readings of a cumulative histogram, interpolated within its bucket
 * as Prometheus' histogram_quantile does. Above the highest finite bucket the answer is that bucket's bound.
 */
export function p99Ms (now: Map<string, number>, before: Map<string, number> | undefined): number | null {
  const bounds = [...now.keys()].filter((le) => le !== '+Inf').map(Number).sort((a, b) => a - b)
  const count = (le: string): number => (now.get(le) ?? 0) - (before?.get(le) ?? 0)
  const total = count('+Inf')
  if (total <= 0) return null
  const rank = 0.99 * total
  let lower = 0
  let below = 0
  for (const bound of bounds) {
    const upTo = count(String(bound))
    if (upTo >= rank) {
      const inBucket = upTo - below
      const seconds = inBucket === 0 ? bound : lower + (bound - lower) * ((rank - below) / inBucket)
      return round(seconds * 1000)
    }
    lower = bound
    below = upTo
  }
  return round(lower * 1000)
}

function round (value: number): number {
  return Math.round(value * 1e4) / 1e4
}
