import type { Config } from '../../config.ts'
import type { RolloutSnapshot } from '../../rollout/snapshot.ts'

/** One guard as the console shows it: its rule, what it sees now, and a sentence saying why it did or did not act. */
export interface GuardRow {
  level: 'L1' | 'L2' | 'L3'
  name: string
  enabled: boolean
  dryRun: boolean
  threshold: string
  minSample: string
  current: string
  /** Acting now (rolled back, paused) or, in dry run, would be. */
  acting: boolean
  sentence: string
}

interface Counts { requests: number, errors: number }
interface L1Status { last?: { at: string, totals: Record<'fast' | 'long', Record<'legacy' | 'migrated', Counts>>, wouldTrip: boolean, reason: string } | null }
interface L2Status { source?: string, load?: number | null, aboveSince?: string | null, paused?: boolean, wouldPause?: boolean, reason?: string | null }
interface L3Status { comparisons?: number, mismatches?: number, signal?: string | null }

/**
 * The guards' rules (the config) and their last readings (`guards.status()`, as in /status) told in one line each,
 * for an operator who should not need the logs to see why a guard did or did not act. Pure.
 */
export function explainGuards (rules: Config['guards'], status: Record<string, unknown>, rollout: RolloutSnapshot): GuardRow[] {
  return [
    explainL1(rules.l1, (status.l1 ?? {}) as L1Status, rollout),
    explainL2(rules.l2, (status.l2 ?? {}) as L2Status),
    explainL3(rules.l3, (status.l3 ?? {}) as L3Status, rollout)
  ]
}

function explainL1 (rules: Config['guards']['l1'], status: L1Status, rollout: RolloutSnapshot): GuardRow {
  const over = duration(rules.windowMs)
  const row = {
    level: 'L1' as const,
    name: 'migrated error rate',
    enabled: rules.enabled,
    dryRun: rules.dryRun,
    threshold: `> ${pct(rules.errorRate)} over ${over} (fast: ≥ ${pct(rules.fastErrorRate)} over ${duration(rules.fastWindowMs)})`,
    minSample: `${rules.minRequests} requests (fast: ${rules.fastMinRequests})`
  }
  const last = status.last ?? undefined
  const long = last?.totals.long.migrated
  const fast = last?.totals.fast.migrated
  const current = long === undefined || fast === undefined
    ? 'no migrated traffic judged yet'
    : `${pct(ratio(long))} (${long.errors} of ${long.requests}) over ${over}; ${pct(ratio(fast))} (${fast.errors} of ${fast.requests}) over ${duration(rules.fastWindowMs)}`
  const done = { ...row, current }
  if (!rules.enabled) return { ...done, acting: false, sentence: 'disabled (guards.l1.enabled: false): errors never roll the rollout back' }
  if (rollout.rolledBack) return { ...done, acting: rollout.trip?.level === 'L1', sentence: rolledBack(rollout, 'L1') }
  if (last === undefined || long === undefined) return { ...done, acting: false, sentence: `no migrated requests judged in the last ${over}: nothing to act on` }
  if (last.wouldTrip) {
    return { ...done, acting: true, sentence: rules.dryRun ? `${last.reason}: would roll back (dry run: no action)` : `${last.reason}: rolling back` }
  }
  if (long.requests < rules.minRequests) {
    return { ...done, acting: false, sentence: `migrated ${long.requests} requests over ${over} < the ${rules.minRequests} needed: no action yet` }
  }
  return { ...done, acting: false, sentence: `migrated ${pct(ratio(long))} errors over ${over} ≤ ${pct(rules.errorRate)}: no action` }
}

function explainL2 (rules: Config['guards']['l2'], status: L2Status): GuardRow {
  const load = typeof status.load === 'number' ? status.load : undefined
  const row = {
    level: 'L2' as const,
    name: 'database load',
    enabled: rules.enabled,
    dryRun: rules.dryRun,
    threshold: `> ${rules.threshold}`,
    minSample: `sustained ${duration(rules.sustainMs)}`,
    current: load === undefined ? 'no reading' : `${load}${status.source === undefined ? '' : ` (from ${status.source})`}`
  }
  if (!rules.enabled) return { ...row, acting: false, sentence: 'disabled (guards.l2.enabled: false): database load never pauses routes or freezes the ramp' }
  if (status.paused === true) return { ...row, acting: true, sentence: `paused the new-feature routes and froze the ramp: ${status.reason ?? ''}` }
  if (status.wouldPause === true) return { ...row, acting: true, sentence: `${status.reason ?? ''}: would pause and freeze (dry run: no action)` }
  if (load === undefined) return { ...row, acting: false, sentence: `no load reading${status.source === undefined ? '' : ` from ${status.source}`}: no action` }
  if (load > rules.threshold) {
    const since = status.aboveSince === null || status.aboveSince === undefined ? '' : ` since ${status.aboveSince}`
    return { ...row, acting: false, sentence: `database load ${load} > ${rules.threshold}${since}; acts once sustained ${duration(rules.sustainMs)}: watching` }
  }
  return { ...row, acting: false, sentence: `database load ${load} ≤ ${rules.threshold}: no action` }
}

function explainL3 (rules: Config['guards']['l3'], status: L3Status, rollout: RolloutSnapshot): GuardRow {
  const over = duration(rules.windowMs)
  const comparisons = status.comparisons ?? 0
  const mismatches = status.mismatches ?? 0
  const rate = ratio({ requests: comparisons, errors: mismatches })
  const row = {
    level: 'L3' as const,
    name: 'data inconsistency',
    enabled: rules.enabled,
    dryRun: rules.dryRun,
    threshold: `> ${pct(rules.mismatchRate)} mismatches over ${over}, or an external signal`,
    minSample: `${rules.minComparisons} comparisons (sampling ${pct(rules.sampleRate)} of safe requests)`,
    current: `${pct(rate)} (${mismatches} of ${comparisons}) over ${over}${status.signal === null || status.signal === undefined ? '' : `; signal ${JSON.stringify(status.signal)}`}`
  }
  if (!rules.enabled) return { ...row, acting: false, sentence: 'disabled (guards.l3.enabled: false): no shadow comparison, no data-rollback webhook' }
  if (rollout.rolledBack) return { ...row, acting: rollout.trip?.level === 'L3', sentence: rolledBack(rollout, 'L3') }
  if (comparisons < rules.minComparisons) {
    return { ...row, acting: false, sentence: `${mismatches} mismatches in ${comparisons} comparisons over ${over}, < the ${rules.minComparisons} needed: no action yet` }
  }
  if (rate > rules.mismatchRate) {
    return { ...row, acting: true, sentence: `${pct(rate)} mismatches over ${over} > ${pct(rules.mismatchRate)}: ${rules.dryRun ? 'would roll back (dry run: no action)' : 'rolling back'}` }
  }
  return { ...row, acting: false, sentence: `${pct(rate)} mismatches over ${over} ≤ ${pct(rules.mismatchRate)}: no action` }
}

function rolledBack (rollout: RolloutSnapshot, level: string): string {
  const trip = rollout.trip
  if (trip?.level === level) return `rolled back at ${trip.at}: ${trip.reason}; stays rolled back until an operator resumes`
  return `the rollout is rolled back${trip === undefined ? '' : ` (${trip.level}: ${trip.reason})`}; the guard waits for a resume`
}

function ratio ({ requests, errors }: Counts): number {
  return requests === 0 ? 0 : errors / requests
}

function pct (value: number): string {
  return `${Math.round(value * 1000) / 10}%`
}

function duration (ms: number): string {
  if (ms >= 3_600_000 && ms % 3_600_000 === 0) return `${ms / 3_600_000} h`
  if (ms >= 60_000 && ms % 60_000 === 0) return `${ms / 60_000} min`
  return `${ms / 1000} s`
}
