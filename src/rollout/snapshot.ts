import type { RoutingState } from '../routing/decide.ts'
import type { SharedRollout, Trip } from './store.ts'
import type { RolloutStateName, WayBackMode } from './values.ts'
import type { Fence } from './way-back.ts'

/** The rollout state in force on this instance: immutable, swapped whole, read by every request. */
export interface RolloutSnapshot extends RoutingState {
  readonly percent: number
  /** The write dial; undefined: writes follow `percent`. */
  readonly writePercent: number | undefined
  /** The route dials in force, by route name. */
  readonly routePercent: ReadonlyMap<string, number>
  readonly state: RolloutStateName
  readonly trip: Trip | undefined
  readonly allow: ReadonlySet<string>
  readonly deny: ReadonlySet<string>
  /** When a resume last re-armed the guards, fleet-wide (ms; 0 = never). */
  readonly armedAt: number
  /** How the data gets back to legacy on a rollback. */
  readonly wayBack: WayBackMode
  /** While present, the moving cohort's writes are refused (503). */
  readonly fence: Fence | undefined
}

export function initialSnapshot (initialPercent: number): RolloutSnapshot {
  return { percent: initialPercent, writePercent: undefined, routePercent: NO_ROUTE_DIALS, state: 'active', rolledBack: false, trip: undefined, allow: new Set(), deny: new Set(), armedAt: 0, wayBack: 'dual_write', fence: undefined }
}

/**
 * The next snapshot from what Redis holds. A key that is missing takes its default; a key whose value was
 * invalid (reported by the store) keeps the last valid value.
 */
export function nextSnapshot (previous: RolloutSnapshot, shared: SharedRollout): RolloutSnapshot {
  const percent = shared.found.percent === 'invalid' ? previous.percent : shared.percent
  const state = shared.found.state === 'invalid' ? previous.state : shared.state
  return {
    percent,
    writePercent: shared.found.writePercent === 'invalid' ? previous.writePercent : shared.writePercent,
    routePercent: nextRouteDials(previous.routePercent, shared),
    state,
    rolledBack: state === 'rolled_back',
    trip: shared.trip,
    allow: sameMembers(previous.allow, shared.allow) ? previous.allow : new Set(shared.allow),
    deny: sameMembers(previous.deny, shared.deny) ? previous.deny : new Set(shared.deny),
    armedAt: Math.max(previous.armedAt, shared.armedAt),
    wayBack: shared.found.wayBack === 'invalid' ? previous.wayBack : shared.wayBack,
    fence: shared.found.fence === 'invalid' ? previous.fence : sameFence(previous.fence, shared.fence) ? previous.fence : shared.fence
  }
}

/**
 * A local rollback (a guard trip or an operator's rollback while Redis is away) laid over a snapshot, with the
 * fence it engages (if any: an existing fence stays).
 */
export function rolledBack (snapshot: RolloutSnapshot, trip: Trip, fence?: Fence): RolloutSnapshot {
  const wasRolledBack = snapshot.rolledBack
  return { ...snapshot, state: 'rolled_back', rolledBack: true, trip: wasRolledBack ? snapshot.trip ?? trip : trip, fence: snapshot.fence ?? (wasRolledBack ? undefined : fence) }
}

/** A fence laid over a snapshot (a local fence not yet in Redis). */
export function fenced (snapshot: RolloutSnapshot, fence: Fence): RolloutSnapshot {
  return snapshot.fence !== undefined ? snapshot : { ...snapshot, fence }
}

export function sameSnapshot (a: RolloutSnapshot, b: RolloutSnapshot): boolean {
  return a.percent === b.percent && a.writePercent === b.writePercent && a.routePercent === b.routePercent && a.state === b.state && a.allow === b.allow && a.deny === b.deny &&
    a.trip?.at === b.trip?.at && a.trip?.level === b.trip?.level && a.armedAt === b.armedAt &&
    a.wayBack === b.wayBack && a.fence === b.fence
}

const NO_ROUTE_DIALS: ReadonlyMap<string, number> = new Map()

/** The route dials Redis holds, an invalid one keeping its last valid value; the same map when nothing moved. */
function nextRouteDials (previous: ReadonlyMap<string, number>, shared: SharedRollout): ReadonlyMap<string, number> {
  const next = new Map(shared.routePercent)
  for (const route of shared.invalidRoutes) {
    const kept = previous.get(route)
    if (kept !== undefined) next.set(route, kept)
  }
  if (next.size === previous.size && [...next].every(([route, percent]) => previous.get(route) === percent)) return previous
  return next.size === 0 ? NO_ROUTE_DIALS : next
}

function sameMembers (current: ReadonlySet<string>, next: string[]): boolean {
  if (current.size !== next.length) return false
  for (const member of next) if (!current.has(member)) return false
  return true
}

function sameFence (a: Fence | undefined, b: Fence | undefined): boolean {
  if (a === undefined || b === undefined) return a === b
  return a.id === b.id && a.at === b.at && a.deadline === b.deadline && a.percent === b.percent && a.held === b.held && a.level === b.level && a.reason === b.reason
}
