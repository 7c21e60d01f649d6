import { BUCKETS, hashBucket, tailBucket, thresholdOf } from './bucket.ts'
import { DEFAULT_ROUTE, type RequestClass, type Route } from './routes.ts'
import { MAX_KEY_BYTES } from './user-key.ts'

export const VERSIONS = ['legacy', 'migrated'] as const
export type Version = typeof VERSIONS[number]

/**
 * Why a request went where it went: shown by `which`, in request logs, and in metrics-free debugging.
 * `route`: a `legacy` or `migrated` route (everyone, no hash); `write_dial`: a write kept on legacy by the write
 * dial although the user's reads are migrated; `read_your_writes`: a read sent to legacy because the user has
 * just written there.
 */
export type Why = 'rolled_back' | 'deny' | 'allow' | 'anonymous' | 'bucket' | 'route' | 'write_dial' | 'read_your_writes'

export interface Decision {
  /** The version of this request (of its class). */
  version: Version
  why: Why
  /** 0..9999, or -1 where the bucket did not matter and was not computed. */
  bucket: number
}

/** The part of the rollout state that routing reads: one immutable snapshot, swapped whole. */
export interface RoutingState {
  rolledBack: boolean
  percent: number
  /** The write dial (`write_percent`); missing: the same as `percent`. */
  writePercent?: number
  /** Route dials (`route:<name>:percent`) by route name; a route without one follows `percent`. */
  routePercent?: ReadonlyMap<string, number>
  allow: ReadonlySet<string>
  deny: ReadonlySet<string>
}

export interface RoutingPolicy {
  strategy: 'hash' | 'tail'
  salt: string
  /** Where anonymous requests go; `migrated` applies only while the rollout is active and above 0%. */
  anonymous: Version
}

/** The decisions that need no bucket: one frozen value each, shared by every request. */
const FIXED = {
  routeLegacy: fixed('legacy', 'route'),
  routeMigrated: fixed('migrated', 'route'),
  rolledBack: fixed('legacy', 'rolled_back'),
  anonymousLegacy: fixed('legacy', 'anonymous'),
  anonymousMigrated: fixed('migrated', 'anonymous'),
  deny: fixed('legacy', 'deny'),
  allow: fixed('migrated', 'allow')
}

function fixed (version: Version, why: Why): Decision {
  return Object.freeze({ version, why, bucket: -1 })
}

/** The kinds of decision that carry a bucket, each interned per bucket (see Router.#byBucket). */
const BUCKET_KINDS = [['migrated', 'bucket'], ['legacy', 'bucket'], ['legacy', 'write_dial'], ['legacy', 'read_your_writes']] as const
const MIGRATED = 0
const LEGACY = 1
const WRITE_DIAL = 2
const READ_YOUR_WRITES = 3

/**
 * Chooses the version of one request. Pure and synchronous: the hot path never waits on anything. A decision
 * is an immutable value, and there are few of them (a kind and a bucket), so each is made once and shared:
 * deciding allocates nothing.
 */
export class Router {
  readonly #policy: RoutingPolicy
  readonly #saltBytes: number
  readonly #scratch: Buffer
  /** One view of the scratch buffer per key length, so hashing allocates nothing. */
  readonly #views: Buffer[] = []
  readonly #interned: Array<Array<Decision | undefined>> = BUCKET_KINDS.map(() => new Array<Decision | undefined>(BUCKETS).fill(undefined))

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

  /**
   * The version of one request of class `cls` on `route` (default: a read on the default route).
   * Reads are migrated when bucket < the read threshold: round(percent × 100), where the route's own dial
   * replaces `percent`. Writes are migrated when bucket < round(min(write_percent, percent) × 100), on every
   * route alike, so one user's writes all land on one side. A route dial below that write threshold does not
   * hold back the reads of users whose writes are already migrated: whoever writes to migrated also reads from
   * it, on every route. `recentWrite`: the user wrote within the read-your-writes window (read-your-writes.ts),
   * which sends a read of the split cohort to legacy.
   */
  decide (state: RoutingState, key: string | undefined, cls: RequestClass = 'read', route: Route = DEFAULT_ROUTE, recentWrite = false): Decision {
    if (route.mode === 'legacy') return FIXED.routeLegacy
    if (state.rolledBack) return FIXED.rolledBack
    if (route.mode === 'migrated') return FIXED.routeMigrated
    const writes = writeThreshold(state)
    const reads = readThreshold(state, route, writes)
    if (key === undefined) {
      const migrated = this.#policy.anonymous === 'migrated' && (cls === 'read' ? reads : writes) > 0
      return migrated ? FIXED.anonymousMigrated : FIXED.anonymousLegacy
    }
    if (state.deny.has(key)) return FIXED.deny
    if (state.allow.has(key)) return FIXED.allow
    const bucket = this.bucketOf(key)
    if (bucket < writes) return this.#byBucket(MIGRATED, bucket)
    if (bucket >= reads) return this.#byBucket(LEGACY, bucket)
    // The split cohort: reads on migrated, writes on legacy. Its writes say `write_dial`, which is how the
    // proxy knows to record them for read your writes.
    if (cls === 'write') return this.#byBucket(WRITE_DIAL, bucket)
    return this.#byBucket(recentWrite ? READ_YOUR_WRITES : MIGRATED, bucket)
  }

  #byBucket (kind: number, bucket: number): Decision {
    const interned = this.#interned[kind] as Array<Decision | undefined>
    const found = interned[bucket]
    if (found !== undefined) return found
    const [version, why] = BUCKET_KINDS[kind] as (typeof BUCKET_KINDS)[number]
    const decision: Decision = Object.freeze({ version, why, bucket })
    interned[bucket] = decision
    return decision
  }

  /** What `which` shows: the versions of a user's reads and writes on a route, and why. Not for the hot path. */
  explain (state: RoutingState, key: string | undefined, route: Route = DEFAULT_ROUTE): Explanation {
    const read = this.decide(state, key, 'read', route)
    const write = this.decide(state, key, 'write', route)
    const writes = writeThreshold(state)
    return {
      route: route.name,
      bucket: key === undefined ? -1 : this.bucketOf(key),
      readThreshold: readThreshold(state, route, writes),
      writeThreshold: writes,
      reads: { version: read.version, why: read.why },
      writes: { version: write.version, why: write.why }
    }
  }
}

export interface Explanation {
  route: string
  /** The user's bucket (computed even where an override decided), or -1 when anonymous. */
  bucket: number
  readThreshold: number
  writeThreshold: number
  reads: { version: Version, why: Why }
  writes: { version: Version, why: Why }
}

/** round(min(write_percent, percent) × 100): a user below it is migrated for writes, on every route. */
export function writeThreshold (state: RoutingState): number {
  const percent = thresholdOf(state.percent)
  const write = state.writePercent === undefined ? percent : thresholdOf(state.writePercent)
  return write < percent ? write : percent
}

/** round(percent × 100) with the route's own dial in place of `percent`, never below the write threshold. */
export function readThreshold (state: RoutingState, route: Route, writes: number = writeThreshold(state)): number {
  const dial = route.index === -1 ? undefined : state.routePercent?.get(route.name)
  const reads = thresholdOf(dial ?? state.percent)
  return reads > writes ? reads : writes
}
