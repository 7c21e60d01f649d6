import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import type { ConnectionKind, Metrics } from '../metrics.ts'
import type { Router, RoutingState, Version } from '../routing/decide.ts'
import type { RequestClass, Route } from '../routing/routes.ts'
import { CLOSE_SERVICE_RESTART } from './ws-frames.ts'

/** A long-lived connection (an upgraded WebSocket or an event stream) that follows the rollout while it is open. */
export interface OpenConnection {
  readonly version: Version
  readonly kind: ConnectionKind
  /** The user key in byte-string form (see routing/user-key.ts); undefined for an anonymous client. */
  readonly key: string | undefined
  /** The route and class it was decided on (default: a read on the default route); it is decided again on them. */
  readonly route?: Route
  readonly cls?: RequestClass
  /** Ends it: a WebSocket with a close frame of `code`, a stream cleanly. Resolves once it is closed. */
  close: (code: number) => Promise<void>
}

interface Entry {
  connection: OpenConnection
  /** Set while a move is scheduled. */
  timer: NodeJS.Timeout | undefined
  closing: Promise<void> | undefined
}

export interface OpenConnectionsOptions {
  router: Router
  /** The rollout state in force now (checked again when a scheduled move comes due). */
  rollout: () => RoutingState
  metrics: Metrics
  log: Logger
  /** Moves are spread uniformly over this many milliseconds, so that reconnects do not arrive at once. */
  spreadMs: number
  random?: () => number
}

/**
 * The open long-lived connections of this instance. When the rollout changes, each is decided again as a new
 * request of the same user would be, and those whose version changed are closed, each after its own random delay
 * within the spread; a client that reconnects lands on the version it now gets. Connections whose version did not
 * change are never touched.
 */
export interface OpenConnectionsEvents {
  added: [connection: OpenConnection]
  /** It closed, for whatever reason (its own, a move, the drain). */
  removed: [connection: OpenConnection]
  /** Its user now gets the other version: it is being closed. */
  moved: [connection: OpenConnection]
}

export class OpenConnections extends EventEmitter<OpenConnectionsEvents> {
  readonly #open = new Set<Entry>()
  readonly #counts: Record<ConnectionKind, number> = { websocket: 0, stream: 0 }
  readonly #options: OpenConnectionsOptions
  readonly #random: () => number
  /** Set by closeAll: the close code of the drain, which anything opened afterwards gets at once. */
  #drainCode = 0

  constructor (options: OpenConnectionsOptions) {
    super()
    this.#options = options
    this.#random = options.random ?? Math.random
  }

  /** How many are open, of one kind or of all. */
  count (kind?: ConnectionKind): number {
    return kind === undefined ? this.#open.size : this.#counts[kind]
  }

  /** Tracks a connection until the returned function is called (when it has closed, for whatever reason). */
  add (connection: OpenConnection): () => void {
    const entry: Entry = { connection, timer: undefined, closing: undefined }
    this.#open.add(entry)
    this.#counts[connection.kind]++
    const gauge = this.#options.metrics.openConnections.labels(connection.version, connection.kind)
    gauge.inc()
    this.emit('added', connection)
    if (this.#drainCode !== 0) entry.closing = connection.close(this.#drainCode) // opened while draining
    // Decided before a change that it missed (a handshake under way during a rollback): it moves like the others.
    this.#reconsiderOne(entry, this.#options.rollout())
    return () => {
      if (!this.#open.delete(entry)) return
      this.#counts[connection.kind]--
      clearTimeout(entry.timer)
      gauge.dec()
      this.emit('removed', connection)
    }
  }

  /** Called on every rollout change: schedules the move of each connection whose version changed. */
  reconsider (state: RoutingState): void {
    for (const entry of this.#open) this.#reconsiderOne(entry, state)
  }

  /** Closes every open connection with `code` (a WebSocket close code) and resolves once all have closed. */
  async closeAll (code: number): Promise<void> {
    this.#drainCode = code
    await Promise.all([...this.#open].map(async (entry) => {
      clearTimeout(entry.timer)
      entry.timer = undefined
      entry.closing ??= entry.connection.close(code)
      await entry.closing
    }))
  }

  #reconsiderOne (entry: Entry, state: RoutingState): void {
    if (entry.closing !== undefined) return
    const { version, key, cls, route } = entry.connection
    if (this.#options.router.decide(state, key, cls, route).version === version) {
      clearTimeout(entry.timer) // moved back before its turn came: it stays
      entry.timer = undefined
    } else if (entry.timer === undefined) {
      entry.timer = setTimeout(() => { this.#move(entry) }, Math.floor(this.#random() * this.#options.spreadMs))
      entry.timer.unref()
    }
  }

  #move (entry: Entry): void {
    entry.timer = undefined
    if (!this.#open.has(entry) || entry.closing !== undefined) return
    const { version, key, kind, cls, route } = entry.connection
    if (this.#options.router.decide(this.#options.rollout(), key, cls, route).version === version) return
    this.#options.metrics.connectionsMoved.labels(version).inc()
    this.#options.log.debug({ version, kind }, 'closing a connection whose user now gets the other version')
    entry.closing = entry.connection.close(CLOSE_SERVICE_RESTART)
    this.emit('moved', entry.connection)
  }
}
