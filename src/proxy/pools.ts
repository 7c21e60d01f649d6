import type { Dispatcher, Pool } from 'undici'
import type { Config } from '../config.ts'
import { ConfigError } from '../errors.ts'
import { Balancer } from '../health/balancer.ts'
import { MemberGroup, type MemberChange, type MemberStatus } from '../health/member.ts'
import { VERSIONS, type Version } from '../routing/decide.ts'

/** One version's upstream pool: keep-alive connections to each member, balanced across the healthy ones. */
export interface UpstreamPool {
  version: Version
  dispatcher: Dispatcher
  /** The members' common base path ('' for none), put in front of every forwarded path. */
  basePath: string
  members: string[]
  /** Retries of an idempotent request that failed before reaching this pool (its `upstream.retries`, or the global one). */
  retries?: number
  /** Each member's health (active checks, outlier ejection). */
  health: MemberGroup
}

export type Pools = Record<Version, UpstreamPool>

export interface PoolOptions {
  now?: () => number
  /** A member started or stopped taking new requests. */
  onChange?: (version: Version, change: MemberChange) => void
  /** The members' states before a reload, by version and member as configured. */
  previous?: Map<string, MemberStatus>
}

export function createPools (config: Config, options: PoolOptions = {}): Pools {
  const pools = {} as Pools
  for (const version of VERSIONS) {
    const pool = config.pools[version]
    const upstream = { ...config.upstream, ...pool.upstream }
    const dispatcherOptions: Pool.Options = {
      connections: upstream.connections,
      pipelining: upstream.pipelining,
      keepAliveTimeout: upstream.keepAliveTimeoutMs,
      headersTimeout: upstream.headersTimeoutMs,
      bodyTimeout: upstream.bodyTimeoutMs,
      connect: { timeout: upstream.connectTimeoutMs }
    }
    const urls = pool.members.map((raw) => new URL(raw))
    const basePath = (urls[0]?.pathname ?? '/').replace(/\/+$/, '')
    if (urls.some((url) => url.pathname.replace(/\/+$/, '') !== basePath)) {
      throw new ConfigError(`pools.${version} = ${JSON.stringify(pool.members)}: every member of a pool must have the same base path`)
    }
    const health = new MemberGroup(pool, options.now ?? Date.now, (change) => options.onChange?.(version, change))
    const members = urls.map((url, i) => health.add(pool.members[i] as string, url.origin, dispatcherOptions, options.previous?.get(`${version} ${pool.members[i] as string}`)))
    pools[version] = { version, dispatcher: new Balancer(version, members), basePath, members: members.map((member) => member.origin), retries: upstream.retries, health }
  }
  return pools
}

export async function closePools (pools: Pools): Promise<void> {
  await Promise.all(VERSIONS.map(async (version) => await pools[version].dispatcher.close()))
}
