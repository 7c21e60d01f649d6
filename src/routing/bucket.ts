import murmurhash3 from 'murmurhash3js-revisited'

/** Buckets per rollout: a percentage maps to a whole number of them, so it has 0.01 granularity. */
export const BUCKETS = 10_000

const murmur = murmurhash3 as typeof murmurhash3 & { inputValidation: boolean }
// Keys are validated where they are read (user-key.ts): skip the library's per-byte check on the hot path.
murmur.inputValidation = false

/** murmur3_x86_32(bytes, seed 0) mod 10000: the bucket of `<salt>:<userKey>` given as raw bytes. */
export function hashBucket (saltedKey: Uint8Array): number {
  return murmur.x86.hash32(saltedKey, 0) % BUCKETS
}

/**
 * The `tail` strategy: the last four decimal digits of a numeric key, read from the end
 * (last × 1000 + second-last × 100 + third-last × 10 + fourth-last), so that 20% means IDs ending in 0 or 1.
 * Missing digits of a short key count as 0. Returns -1 for a key that is not all digits.
 */
export function tailBucket (key: string): number {
  const n = key.length
  if (n === 0) return -1
  let bucket = 0
  let weight = 1000
  for (let i = n - 1; i >= 0; i--) {
    const digit = key.charCodeAt(i) - 48
    if (digit < 0 || digit > 9) return -1
    if (weight >= 1) {
      bucket += digit * weight
      weight /= 10
    }
  }
  return bucket
}

/** The first bucket that stays on legacy at this percentage: a user is migrated when bucket < threshold. */
export function thresholdOf (percent: number): number {
  return Math.round(percent * 100)
}
