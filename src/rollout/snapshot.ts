import type { RoutingState } from '../routing/decide.ts'
import type { RolloutRecord, Trip } from './store.ts'
import type { RolloutStateName } from './values.ts'

/** The rollout state in force on this instance: immutable, swapped whole, read by every request. */
export interface RolloutSnapshot extends RoutingState {
  readonly percent: number
  readonly state: RolloutStateName
  readonly trip: Trip | undefined
  readonly allow: ReadonlySet<string>
  readonly deny: ReadonlySet<string>
}

export function initialSnapshot (initialPercent: number): RolloutSnapshot {
  return { percent: initialPercent, state: 'active', rolledBack: false, trip: undefined, allow: new Set(), deny: new Set() }
}

/**
 * The next snapshot from what Redis holds. A key that is missing takes its default; a key whose value was
 * invalid (undefined here, reported by the store) keeps the last valid value.
 */
export function nextSnapshot (previous: RolloutSnapshot, record: RolloutRecord, missing: { percent: boolean, state: boolean }, initialPercent: number): RolloutSnapshot {
  const percent = record.percent ?? (missing.percent ? initialPercent : previous.percent)
  const state = record.state ?? (missing.state ? 'active' : previous.state)
  return {
    percent,
    state,
    rolledBack: state === 'rolled_back',
    trip: record.trip,
    allow: sameMembers(previous.allow, record.allow) ? previous.allow : new Set(record.allow),
    deny: sameMembers(previous.deny, record.deny) ? previous.deny : new Set(record.deny)
  }
}

/** A local rollback (a guard trip or an operator's rollback while Redis is away) laid over a snapshot. */
export function rolledBack (snapshot: RolloutSnapshot, trip: Trip): RolloutSnapshot {
  return { ...snapshot, state: 'rolled_back', rolledBack: true, trip: snapshot.rolledBack ? snapshot.trip ?? trip : trip }
}

export function sameSnapshot (a: RolloutSnapshot, b: RolloutSnapshot): boolean {
  return a.percent === b.percent && a.state === b.state && a.allow === b.allow && a.deny === b.deny &&
    a.trip?.at === b.trip?.at && a.trip?.level === b.trip?.level
}

function sameMembers (current: ReadonlySet<string>, next: string[]): boolean {
  if (current.size !== next.length) return false
  for (const member of next) if (!current.has(member)) return false
  return true
}
