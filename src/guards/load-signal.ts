/** What a load signal must be: a number from 0 to 1 (a ratio of the database's capacity). */
export const LOAD_RULE = 'a number from 0 to 1'

/** A load value from Redis or Prometheus, or undefined when it is not one. */
export function parseLoad (text: string): number | undefined {
  if (!/^\s*(\d+(\.\d*)?|\.\d+)(e-?\d+)?\s*$/i.test(text)) return undefined
  const value = Number(text)
  return value >= 0 && value <= 1 ? value : undefined
}

/**
 * Reads a load value from a Prometheus instant query URL (`…/api/v1/query?query=…`): the first sample of a
 * vector, or a scalar. Throws when the answer is not one.
 */
export async function queryPrometheus (url: string, timeoutMs: number): Promise<{ value: number | undefined, raw: string }> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } })
  if (!res.ok) throw new Error(`Prometheus answered ${res.status}`)
  const answer = await res.json() as { status?: string, data?: { resultType?: string, result?: unknown } }
  const result = answer.data?.result
  let sample: unknown
  if (answer.data?.resultType === 'scalar' && Array.isArray(result)) sample = result[1]
  else if (Array.isArray(result)) sample = (result[0] as { value?: unknown[] } | undefined)?.value?.[1]
  if (answer.status !== 'success' || typeof sample !== 'string') throw new Error('Prometheus answered no sample (an empty vector or an error)')
  return { value: parseLoad(sample), raw: sample }
}
