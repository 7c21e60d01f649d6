import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import murmurhash3 from 'murmurhash3js-revisited'
import { BUCKETS, hashBucket, tailBucket, thresholdOf } from '../src/routing/bucket.ts'
import { Router, type RoutingState } from '../src/routing/decide.ts'
import { toByteString } from '../src/routing/user-key.ts'

const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
const state = (percent: number, extra: Partial<RoutingState> = {}): RoutingState =>
  ({ percent, rolledBack: false, allow: new Set(), deny: new Set(), ...extra })

// The README's table: any change of hash, salt handling or byte encoding breaks one of these.
const VECTORS: Array<[string, number, number]> = [
  ['alice', 2733780698, 698],
  ['bob', 1333497528, 7528],
  ['user-42', 742541435, 1435],
  ['12345', 2182483264, 3264],
  ['José', 449455876, 5876],
  ['日本語ユーザー', 2327868074, 8074]
]

test('bucket test vectors match the README (murmur3_x86_32 of "<salt>:<key>" mod 10000)', () => {
  for (const [key, hash, bucket] of VECTORS) {
    assert.equal(hash % BUCKETS, bucket, key)
    assert.equal(hashBucket(Buffer.from(`default:${key}`, 'utf8')), bucket, key)
    assert.equal(router.bucketOf(toByteString(key)), bucket, key)
  }
  assert.equal(new Router({ strategy: 'hash', salt: 'checkout-v2', anonymous: 'legacy' }).bucketOf('alice'), 3564)
})

test('a user is migrated exactly when bucket < round(percent × 100)', () => {
  const alice = toByteString('alice') // bucket 698
  assert.equal(router.decide(state(6.98), alice).version, 'legacy') // threshold 698: the exact boundary stays legacy
  assert.equal(router.decide(state(6.99), alice).version, 'migrated') // boundary + 1
  assert.equal(router.decide(state(0), alice).version, 'legacy')
  assert.equal(router.decide(state(100), alice).version, 'migrated')
  assert.equal(thresholdOf(20.55), 2055)
  assert.equal(thresholdOf(0.01), 1)
})

test('0% sends nobody and 100% sends everybody to migrated', () => {
  for (let i = 0; i < 2000; i++) {
    const key = `user-${i}`
    assert.equal(router.decide(state(0), key).version, 'legacy')
    assert.equal(router.decide(state(100), key).version, 'migrated')
  }
})

test('the migrated share of 100,000 distinct keys is within ±0.5 points of the percentage', () => {
  for (const percent of [1, 20, 50]) {
    let migrated = 0
    for (let i = 0; i < 100_000; i++) if (router.decide(state(percent), `customer-${i}`).version === 'migrated') migrated++
    const share = migrated / 1000
    assert.ok(Math.abs(share - percent) <= 0.5, `${percent}%: ${share}% migrated`)
  }
})

test('raising the percentage never moves a key from migrated to legacy (property)', () => {
  fc.assert(fc.property(
    fc.string({ minLength: 1, maxLength: 64, unit: 'grapheme' }),
    fc.integer({ min: 0, max: 10_000 }),
    fc.integer({ min: 0, max: 10_000 }),
    (user, a, b) => {
      const [low, high] = a <= b ? [a / 100, b / 100] : [b / 100, a / 100]
      const key = toByteString(user)
      const before = router.decide(state(low), key).version
      const after = router.decide(state(high), key).version
      return !(before === 'migrated' && after === 'legacy')
    }
  ), { numRuns: 2000 })
})

test('the same key at the same percentage always gets the same version', () => {
  const again = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
  for (let i = 0; i < 1000; i++) {
    assert.deepEqual(router.decide(state(37.5), `k${i}`), again.decide(state(37.5), `k${i}`))
  }
})

test('deny wins over allow; a rollback sends everyone, the allow-set included, to legacy', () => {
  const bob = 'bob' // bucket 7528: legacy below 75.29%
  assert.deepEqual(router.decide(state(10, { allow: new Set([bob]) }), bob), { version: 'migrated', why: 'allow', bucket: -1 })
  assert.equal(router.decide(state(10, { allow: new Set([bob]), deny: new Set([bob]) }), bob).why, 'deny')
  assert.equal(router.decide(state(100, { deny: new Set(['alice']) }), 'alice').version, 'legacy')
  assert.deepEqual(router.decide(state(100, { rolledBack: true, allow: new Set([bob]) }), bob), { version: 'legacy', why: 'rolled_back', bucket: -1 })
})

test('anonymous requests go to legacy unless configured otherwise', () => {
  assert.deepEqual(router.decide(state(100), undefined), { version: 'legacy', why: 'anonymous', bucket: -1 })
  const toMigrated = new Router({ strategy: 'hash', salt: 'default', anonymous: 'migrated' })
  assert.equal(toMigrated.decide(state(20), undefined).version, 'migrated')
  assert.equal(toMigrated.decide(state(0), undefined).version, 'legacy')
  assert.equal(toMigrated.decide(state(20, { rolledBack: true }), undefined).version, 'legacy')
})

test('tail strategy: the last four digits read from the end; 20% = IDs ending in 0 or 1', () => {
  assert.equal(tailBucket('12345'), 5432)
  assert.equal(tailBucket('98710'), 178)
  assert.equal(tailBucket('7'), 7000)
  assert.equal(tailBucket('abc'), -1)
  const tail = new Router({ strategy: 'tail', salt: 'default', anonymous: 'legacy' })
  for (let id = 1_000_000; id < 1_001_000; id++) {
    const last = id % 10
    const secondLast = Math.floor(id / 10) % 10
    assert.equal(tail.decide(state(20), String(id)).version, last <= 1 ? 'migrated' : 'legacy', String(id))
    assert.equal(tail.decide(state(25), String(id)).version, last <= 1 || (last === 2 && secondLast <= 4) ? 'migrated' : 'legacy', String(id))
  }
  // A key that is not numeric falls back to the hash.
  assert.equal(tail.bucketOf('alice'), 698)
})

test('the bucket is murmur3_x86_32 as murmurhash3js-revisited computes it, for any bytes (property)', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
    assert.equal(hashBucket(bytes), murmurhash3.x86.hash32(bytes, 0) % BUCKETS)
  }), { numRuns: 20_000 })
})
