import type { Config } from '../config.ts'
import type { FleetTotals, WindowName } from './fleet-counts.ts'

export type ErrorRateRules = Config['guards']['l1']

export interface Verdict {
  trip: boolean
  /** The window that decided (the fast one first: a hard failure is the urgent case). */
  window?: WindowName
  reason: string
}

/**
 * The L1 decision from the fleet's counts. Pure. A window trips when it has at least its minimum of migrated
 * requests and an error rate above its limit (the fast window: at or above). In comparison mode the migrated
 * rate must also be worse than legacy's by more than the margin, so that an outage both versions share (a
 * downstream service, the network) does not roll back a healthy migration. Legacy without traffic in the
 * window cannot be compared with, and then the absolute rule alone decides.
 */
export function judge (totals: FleetTotals, rules: ErrorRateRules): Verdict {
  const windows = [
    { name: 'fast' as const, ms: rules.fastWindowMs, limit: rules.fastErrorRate, min: rules.fastMinRequests, atLimit: true },
    { name: 'long' as const, ms: rules.windowMs, limit: rules.errorRate, min: rules.minRequests, atLimit: false }
  ]
  const notes: string[] = []
  for (const window of windows) {
    const migrated = totals[window.name].migrated
    const legacy = totals[window.name].legacy
    const rate = ratio(migrated.errors, migrated.requests)
    const over = window.atLimit ? rate >= window.limit : rate > window.limit
    const what = `migrated error rate ${percent(rate)} (${migrated.errors} of ${migrated.requests}) over ${seconds(window.ms)}`
    if (migrated.requests < window.min) {
      notes.push(`${seconds(window.ms)}: ${migrated.requests} of the ${window.min} requests needed`)
      continue
    }
    if (!over) {
      notes.push(`${what} within ${percent(window.limit)}`)
      continue
    }
    // One client repeating one key (or a few) cannot roll the fleet back: the failures must come from many users.
    const users = totals.failingUsers[window.name]
    if (users < rules.minUsers) {
      notes.push(`${what}, but from ${users} distinct users of the ${rules.minUsers} needed`)
      continue
    }
    if (rules.compareWithLegacy && legacy.requests > 0) {
      const legacyRate = ratio(legacy.errors, legacy.requests)
      if (rate - legacyRate <= rules.legacyMargin) {
        notes.push(`${what}, but legacy fails too (${percent(legacyRate)}, margin ${percent(rules.legacyMargin)})`)
        continue
      }
      return { trip: true, window: window.name, reason: `${what} ${window.atLimit ? '≥' : '>'} ${percent(window.limit)} from ${users} users, legacy ${percent(legacyRate)}` }
    }
    return { trip: true, window: window.name, reason: `${what} ${window.atLimit ? '≥' : '>'} ${percent(window.limit)} from ${users} users` }
  }
  return { trip: false, reason: notes.join('; ') }
}

function ratio (errors: number, requests: number): number {
  return requests === 0 ? 0 : errors / requests
}

function percent (value: number): string {
  return `${Math.round(value * 1000) / 10}%`
}

function seconds (ms: number): string {
  return ms >= 60_000 && ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`
}

/** One version's latency quantile over the window, from the local traffic window. */
export interface Quantile {
  seconds: number
  count: number
}

/**
 * The optional latency rule (off while `latencyRatio` is 0): migrated's p99 above legacy's times the ratio over
 * the long window, each with at least `latencyMinRequests` answers. Pure. Quantiles are bucket bounds, so the
 * ratio compares buckets (1, 2, 5 steps): coarse on purpose, it is meant for a pool that got many times slower.
 */
export function judgeLatency (migrated: Quantile, legacy: Quantile, rules: ErrorRateRules): Verdict {
  if (rules.latencyRatio <= 0) return { trip: false, reason: 'latency rule off' }
  if (migrated.count < rules.latencyMinRequests || legacy.count < rules.latencyMinRequests) {
    return { trip: false, reason: `latency: ${Math.min(migrated.count, legacy.count)} of the ${rules.latencyMinRequests} answers per version needed` }
  }
  const what = `migrated p99 ${ms(migrated.seconds)} against legacy p99 ${ms(legacy.seconds)} over ${seconds(rules.windowMs)}`
  if (migrated.seconds > legacy.seconds * rules.latencyRatio) {
    return { trip: true, window: 'long', reason: `${what} > ${rules.latencyRatio}×` }
  }
  return { trip: false, reason: `${what} within ${rules.latencyRatio}×` }
}

function ms (value: number): string {
  return Number.isFinite(value) ? `${Math.round(value * 1000)} ms` : 'over 30 s'
}
