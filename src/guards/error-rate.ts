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
