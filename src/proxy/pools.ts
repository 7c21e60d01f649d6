import { BalancedPool, Pool, type Dispatcher } from 'undici'
import type { Config } from '../config.ts'
import { ConfigError } from '../errors.ts'
import { VERSIONS, type Version } from '../routing/decide.ts'

/** One version's upstream pool: keep-alive connections to each member, balanced across members. */
export interface UpstreamPool {
  version: Version
  dispatcher: Dispatcher
  /** The members' common base path ('' for none), put in front of every forwarded path. */
  basePath: string
  members: string[]
}

export type Pools = Record<Version, UpstreamPool>

export function createPools (config: Config): Pools {
  const options: Pool.Options = {
    connections: config.upstream.connections,
    pipelining: config.upstream.pipelining,
    keepAliveTimeout: config.upstream.keepAliveTimeoutMs,
    headersTimeout: config.upstream.headersTimeoutMs,
    bodyTimeout: config.upstream.bodyTimeoutMs,
    connect: { timeout: config.upstream.connectTimeoutMs }
  }
  const pools = {} as Pools
  for (const version of VERSIONS) {
    const urls = config.pools[version].map((raw) => new URL(raw))
    const basePath = (urls[0]?.pathname ?? '/').replace(/\/+$/, '')
    if (urls.some((url) => url.pathname.replace(/\/+$/, '') !== basePath)) {
      throw new ConfigError(`pools.${version} = ${JSON.stringify(config.pools[version])}: every member of a pool must have the same base path`)
    }
    const members = urls.map((url) => url.origin)
    // A single member needs no balancing; BalancedPool also steers away from members that fail to connect.
    const dispatcher = members.length === 1 ? new Pool(members[0] as string, options) : new BalancedPool(members, options)
    pools[version] = { version, dispatcher, basePath, members }
  }
  return pools
}

export async function closePools (pools: Pools): Promise<void> {
  await Promise.all(VERSIONS.map(async (version) => await pools[version].dispatcher.close()))
}
