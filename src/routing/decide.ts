import { hashBucket, tailBucket, thresholdOf } from './bucket.ts'
import { MAX_KEY_BYTES } from './user-key.ts'

export const VERSIONS = ['legacy', 'migrated'] as const
export type Version = typeof VERSIONS[number]

/** Why a request went where it went: shown by `which`, in request logs, and in metrics-free debugging. */
export type Why = 'rolled_back' | 'deny' | 'allow' | 'anonymous' | 'bucket'

export interface Decision {
  version: Version
  why: Why
  /** 0..9999, or -1 where the bucket did not matter and was not computed. */
  bucket: number
}

/** The part of the rollout state that routing reads: one immutable snapshot, swapped whole. */
export interface RoutingState {
  rolledBack: boolean
  percent: number
  allow: ReadonlySet<string>
  deny: ReadonlySet<string>
}

export interface RoutingPolicy {
  strategy: 'hash' | 'tail'
  salt: string
  /** Where anonymous requests go; `migrated` applies only while the rollout is active and above 0%. */
  anonymous: Version
}

/** Chooses the version of one request. Pure and synchronous: the hot path never waits on anything. */
export class Router {
  readonly #policy: RoutingPolicy
  readonly #saltBytes: number
  readonly #scratch: Buffer
  /** One view of the scratch buffer per key length, so hashing allocates nothing. */
  readonly #views: Buffer[] = []

  constructor (policy: RoutingPolicy) {
    this.#policy = policy
    const prefix = Buffer.from(`${policy.salt}:`, 'utf8')
    this.#saltBytes = prefix.length
    this.#scratch = Buffer.alloc(prefix.length + MAX_KEY_BYTES)
    prefix.copy(this.#scratch)
    for (let n = 0; n <= MAX_KEY_BYTES; n++) this.#views.push(this.#scratch.subarray(0, prefix.length + n))
  }

  /** The bucket of a key in byte-string form (see user-key.ts). */
  bucketOf (key: string): number {
    if (this.#policy.strategy === 'tail') {
      const tail = tailBucket(key)
      if (tail !== -1) return tail
    }
    const n = this.#scratch.write(key, this.#saltBytes, 'latin1')
    return hashBucket(this.#views[n] as Buffer)
  }

  decide (state: RoutingState, key: string | undefined): Decision {
    if (state.rolledBack) return { version: 'legacy', why: 'rolled_back', bucket: -1 }
    if (key === undefined) {
      const migrated = this.#policy.anonymous === 'migrated' && state.percent > 0
      return { version: migrated ? 'migrated' : 'legacy', why: 'anonymous', bucket: -1 }
    }
    if (state.deny.has(key)) return { version: 'legacy', why: 'deny', bucket: -1 }
    if (state.allow.has(key)) return { version: 'migrated', why: 'allow', bucket: -1 }
    const bucket = this.bucketOf(key)
    return { version: bucket < thresholdOf(state.percent) ? 'migrated' : 'legacy', why: 'bucket', bucket }
  }
}
