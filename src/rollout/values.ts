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
