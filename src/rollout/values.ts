/**
 * Validation of the values an operator (or anything else) may leave in Redis. Bad input, not a bug:
 * the parser says what is wrong and the caller keeps the last valid state.
 */

export type RolloutStateName = 'active' | 'rolled_back'
export const STATE_NAMES: readonly RolloutStateName[] = ['active', 'rolled_back']

const PERCENT = /^(?:100(?:\.0{1,2})?|[0-9]{1,2}(?:\.[0-9]{1,2})?)$/

/** `0` … `100` with at most two decimals; undefined when the text is anything else. */
export function parsePercent (text: string): number | undefined {
  const trimmed = text.trim()
  return PERCENT.test(trimmed) ? Number(trimmed) : undefined
}

export function parseStateName (text: string): RolloutStateName | undefined {
  return (STATE_NAMES as readonly string[]).includes(text) ? text as RolloutStateName : undefined
}

/** What `percent` accepts, for error messages. */
export const PERCENT_RULE = 'a number from 0 to 100 with at most two decimals'
export const STATE_RULE = `one of ${STATE_NAMES.join(', ')}`

/** How the data gets back to legacy on a rollback (`way_back`): see docs/way-back.md. A missing key is `dual_write`. */
export type WayBackMode = 'dual_write' | 'reverse_sync' | 'none'
export const WAY_BACK_MODES: readonly WayBackMode[] = ['dual_write', 'reverse_sync', 'none']

export function parseWayBack (text: string): WayBackMode | undefined {
  return (WAY_BACK_MODES as readonly string[]).includes(text) ? text as WayBackMode : undefined
}

export const WAY_BACK_RULE = `one of ${WAY_BACK_MODES.join(', ')}`

const LAG = /^\s*(?:\d+(?:\.\d*)?|\.\d+)\s*$/

/** The reverse lag in seconds: a decimal ≥ 0; undefined when the text is anything else. */
export function parseLag (text: string): number | undefined {
  if (!LAG.test(text)) return undefined
  const value = Number(text)
  return Number.isFinite(value) ? value : undefined
}

export const LAG_RULE = 'a decimal number of seconds, 0 or more'
