import { Redis, Cluster, type RedisOptions } from 'ioredis'

export type RedisClient = Redis | Cluster

export interface RedisConnectOptions {
  /** Upper bound of every control-plane command, so nothing ever waits long on a sick Redis. */
  commandTimeoutMs: number
  /** For the subscriber connection: commands may queue while it reconnects, since it only (re)subscribes. */
  subscriber?: boolean
  connectionName?: string
}

/** Reconnect quickly at first, then every 2 s at most. */
const retryStrategy = (attempt: number): number => Math.min(50 * 2 ** Math.min(attempt, 6), 2_000)

/**
 * Connects to Redis from a URL: `redis://` or `rediss://` (standalone), `redis+sentinel://[:password@]host:port[,host:port…]/master[/db]`
 * or `redis+cluster://[:password@]host:port[,host:port…]`. No offline queue and a command timeout: a command to an
 * unreachable Redis fails at once instead of waiting, and the caller keeps serving on what it knows.
 */
export function connectRedis (url: string, options: RedisConnectOptions): RedisClient {
  const common: RedisOptions = {
    lazyConnect: false,
    enableOfflineQueue: options.subscriber === true,
    maxRetriesPerRequest: options.subscriber === true ? null : 1,
    commandTimeout: options.subscriber === true ? undefined : options.commandTimeoutMs,
    connectTimeout: Math.max(options.commandTimeoutMs, 1_000),
    retryStrategy,
    autoResubscribe: false, // RolloutSync re-subscribes itself on every 'ready' (see there)
    connectionName: options.connectionName
  }
  const client = createClient(url, common)
  if (client instanceof Cluster) client.on('+node', guardReplies)
  else guardReplies(client)
  return client
}

function createClient (url: string, common: RedisOptions): RedisClient {
  const multiHost = /^(redis\+sentinel|redis\+cluster):\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/]+)(\/.*)?$/.exec(url)
  if (multiHost === null) return new Redis(url, common)
  const [, scheme, user, pass, authority = '', path = ''] = multiHost
  const username = user === undefined || user === '' ? undefined : decodeURIComponent(user)
  const password = pass === undefined || pass === '' ? undefined : decodeURIComponent(pass)
  if (scheme === 'redis+sentinel') {
    const [name, db] = path.split('/').filter((part) => part !== '')
    return new Redis({
      ...common,
      sentinels: hosts(authority, 26379),
      name: name ?? 'mymaster',
      db: db === undefined ? 0 : Number(db),
      password,
      username,
      sentinelRetryStrategy: retryStrategy
    })
  }
  return new Cluster(hosts(authority, 6379), {
    enableOfflineQueue: common.enableOfflineQueue,
    clusterRetryStrategy: retryStrategy,
    redisOptions: { ...common, password, username }
  })
}

/** The comma-separated host list of a sentinel or cluster URL (which `new URL` cannot split). */
function hosts (authority: string, defaultPort: number): Array<{ host: string, port: number }> {
  return authority.split(',').map((entry) => {
    const colon = entry.lastIndexOf(':')
    return colon === -1 || entry.endsWith(']')
      ? { host: entry.replace(/^\[(.*)\]$/, '$1'), port: defaultPort }
      : { host: entry.slice(0, colon).replace(/^\[(.*)\]$/, '$1'), port: Number(entry.slice(colon + 1)) }
  })
}

/** True while the client can run commands. */
export function isReady (client: RedisClient): boolean {
  return client.status === 'ready'
}

/**
 * The Redis ACL command rules dbshift (proxy and CLI) needs, on keys and channels `<prefix>:*` (`~dbshift:*`,
 * `&dbshift:*`). Reads, writes of its own keys, Lua scripts, pub/sub, transactions and the connection's own
 * commands; INFO for the client's ready check, CLUSTER SLOTS for Redis Cluster. Nothing @dangerous (FLUSHALL, KEYS,
 * CONFIG, DEBUG, …). As a command: `ACL SETUSER dbshift on >… ~dbshift:* &dbshift:* <these rules>`.
 */
export const REDIS_ACL_RULES: readonly string[] = ['+@read', '+@write', '+@scripting', '+@pubsub', '+@transaction', '+@connection', '-@dangerous', '+info', '+cluster|slots']

/** How the error of a connection dropped for a reply of the wrong shape begins. */
export const WRONG_SHAPE = 'Redis answered with a reply of the wrong shape'

/**
 * ioredis parses replies inside the socket's `data` listener, which it adds with prependListener to each new socket;
 * a reply of an unexpected shape (an integer where a subscription confirmation belongs) throws there, out of reach
 * of any promise, and would end the process. Each socket the client takes gets a prependListener that wraps that
 * listener, so the throw drops the connection (an `error`, then a reconnect with the usual back-off) instead.
 */
function guardReplies (redis: Redis): void {
  type Socket = NodeJS.ReadWriteStream & { destroy: (err?: Error) => void }
  const target = redis as unknown as { stream?: Socket }
  let current = target.stream
  Object.defineProperty(target, 'stream', {
    configurable: true,
    enumerable: true,
    get: () => current,
    set: (stream: Socket | undefined) => {
      current = stream
      if (stream === undefined) return
      const prepend = stream.prependListener.bind(stream)
      stream.prependListener = ((event: string, listener: (...args: unknown[]) => void) => {
        if (event !== 'data') return prepend(event, listener)
        return prepend(event, (...args: unknown[]) => {
          try {
            listener(...args)
          } catch (err) {
            stream.destroy(new Error(`${WRONG_SHAPE}: ${err instanceof Error ? err.message : String(err)}`))
          }
        })
      }) as typeof stream.prependListener
    }
  })
}
