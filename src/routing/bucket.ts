/** Buckets per rollout: a percentage maps to a whole number of them, so it has 0.01 granularity. */
export const BUCKETS = 10_000

/**
 * murmur3_x86_32(bytes, seed 0) mod 10000: the bucket of `<salt>:<userKey>` given as raw bytes.
 * MurmurHash3's x86 32-bit variant written out with Math.imul, so that the 32-bit hash never leaves this function:
 * returned from a library it is a number above 2^30 half the time, which V8 boxes on the heap, on every request.
 * The tests hold it to murmurhash3js-revisited on random bytes and to the documented vectors.
 */
export function hashBucket (bytes: Uint8Array): number {
  const n = bytes.length
  const blocks = n - (n & 3)
  let h = 0
  let i = 0
  for (; i < blocks; i += 4) {
    let k = ((bytes[i] as number) | ((bytes[i + 1] as number) << 8) | ((bytes[i + 2] as number) << 16) | ((bytes[i + 3] as number) << 24))
    k = Math.imul(k, C1)
    k = (k << 15) | (k >>> 17)
    h ^= Math.imul(k, C2)
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  const rest = n & 3
  if (rest !== 0) {
    let k = bytes[i] as number
    if (rest >= 2) k ^= (bytes[i + 1] as number) << 8
    if (rest === 3) k ^= (bytes[i + 2] as number) << 16
    k = Math.imul(k, C1)
    k = (k << 15) | (k >>> 17)
    h ^= Math.imul(k, C2)
  }
  h ^= n
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return (h >>> 0) % BUCKETS
}

const C1 = 0xcc9e2d51
const C2 = 0x1b873593

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
