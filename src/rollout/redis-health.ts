import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Command } from 'ioredis'
import { WRONG_SHAPE, type RedisClient } from './redis.ts'

/**
 * What this instance can do with Redis: `connected` (commands are accepted), `refusing` (connected, but Redis
 * refuses some of dbshift's commands: an ACL without a permission, a full memory under `noeviction`, a read-only
 * replica, …) or `disconnected` (no connection, or one that answers with replies of the wrong shape).
 */
export type RedisState = 'connected' | 'refusing' | 'disconnected'

/**
 * The error codes with which a connected Redis refuses a command for a reason of its own, not of the command's:
 * these say "Redis is not usable as it is", unlike a wrong argument. A refusal inside a script keeps its code.
 */
const REFUSALS = new Set(['NOPERM', 'NOAUTH', 'WRONGPASS', 'OOM', 'READONLY', 'MISCONF', 'LOADING', 'BUSY', 'MASTERDOWN', 'CLUSTERDOWN', 'NOREPLICAS', 'TRYAGAIN'])

/** Redis 7.0 reports an ACL refusal inside a script as a plain ERR. */
const SCRIPT_NOPERM = /^ERR The user executing the script can't run this command/

/**
 * How long a refusal (or a reply of the wrong shape) is remembered without being seen again. The heartbeat and
 * the polls repeat every command dbshift needs well within this, so a refusal that is still there is seen again.
 */
export const REFUSAL_MEMORY_MS = 15_000

export interface RedisHealthEvents {
  change: [state: RedisState, reason: string | null, previous: RedisState]
}

interface Refusal { reason: string, at: number }

/**
 * Watches one control-plane connection: its status, the outcome of every command sent on it, and replies of the
 * wrong shape (connectRedis drops a connection whose replies cannot be parsed; a PING after each connect must be
 * answered PONG).
 */
export class RedisHealth extends EventEmitter<RedisHealthEvents> {
  readonly #client: RedisClient
  readonly #now: () => number
  /** The latest refusal per command (a script counts as its own command); a later success of it clears it. */
  readonly #refusals = new Map<string, Refusal>()
  #wrongShape: Refusal | undefined
  #lastError: string | undefined
  #state: RedisState
  #timer: NodeJS.Timeout

  constructor (client: RedisClient, now: () => number = Date.now) {
    super()
    this.#client = client
    this.#now = now
    this.#state = client.status === 'ready' ? 'connected' : 'disconnected'
    observeCommands(client, (command, err) => { this.#outcome(command, err) })
    client.on('ready', () => {
      this.#refusals.clear() // a new connection: what it refuses is learnt again
      this.#lastError = undefined
      this.#update()
      // Whatever answers on the port must at least answer PING like Redis; else every reply is nonsense.
      client.ping().then((reply: unknown) => {
        // (In subscriber mode, RESP2 answers ["pong", ""].)
        if (reply === 'PONG' || (Array.isArray(reply) && String(reply[0]) === 'pong')) return
        this.#garbled(new Error(`${WRONG_SHAPE}: PING was answered with ${JSON.stringify(reply)}`))
        client.disconnect(true)
      }, () => {})
    })
    client.on('close', () => { this.#update() })
    client.on('error', (err: Error) => {
      this.#lastError = err.message
      if (err.message.startsWith(WRONG_SHAPE)) this.#garbled(err)
      else this.#update()
    })
    // Refusals that are no longer seen expire.
    this.#timer = setInterval(() => { this.#update() }, 1_000).unref()
  }

  get state (): RedisState {
    return this.#state
  }

  /** Why the state is not `connected` (the refusal or the connection error, as Redis or the socket said it). */
  get reason (): string | null {
    if (this.#state === 'refusing') return this.#latestRefusal()?.reason ?? null
    if (this.#state === 'disconnected') return this.#wrongShape?.reason ?? this.#lastError ?? 'connecting'
    return null
  }

  close (): void {
    clearInterval(this.#timer)
  }

  #outcome (command: Command, err: unknown): void {
    const name = command.name
    const id = name === 'eval' ? `script ${scriptSha(String(command.args[0]))}` : name === 'evalsha' ? `script ${String(command.args[0])}` : name
    if (err === undefined) {
      if (this.#refusals.delete(id)) this.#update()
      return
    }
    const message = err instanceof Error ? err.message : String(err)
    const code = /^([A-Z]+)\b/.exec(message)?.[1]
    if (err instanceof Error && err.name === 'ReplyError' && ((code !== undefined && REFUSALS.has(code)) || SCRIPT_NOPERM.test(message))) {
      this.#refusals.set(id, { reason: `${name}: ${message}`, at: this.#now() })
      this.#update()
    }
  }

  #garbled (err: Error): void {
    this.#wrongShape = { reason: `${err.message}; is it a Redis server?`, at: this.#now() }
    this.#update()
  }

  #latestRefusal (): Refusal | undefined {
    let latest: Refusal | undefined
    for (const refusal of this.#refusals.values()) if (latest === undefined || refusal.at > latest.at) latest = refusal
    return latest
  }

  #update (): void {
    const now = this.#now()
    for (const [name, refusal] of this.#refusals) if (now - refusal.at > REFUSAL_MEMORY_MS) this.#refusals.delete(name)
    if (this.#wrongShape !== undefined && now - this.#wrongShape.at > REFUSAL_MEMORY_MS) this.#wrongShape = undefined
    const next: RedisState = this.#wrongShape !== undefined || this.#client.status !== 'ready'
      ? 'disconnected'
      : this.#refusals.size > 0 ? 'refusing' : 'connected'
    const previous = this.#state
    if (next === previous) return
    this.#state = next
    this.emit('change', next, this.reason, previous)
  }
}

const shas = new Map<string, string>()

/** A script's SHA1, so that its EVAL and its EVALSHA are one command here (the scripts are a few constants). */
function scriptSha (script: string): string {
  let sha = shas.get(script)
  if (sha === undefined) {
    sha = createHash('sha1').update(script).digest('hex')
    if (shas.size < 100) shas.set(script, sha)
  }
  return sha
}

const healths = new WeakMap<RedisClient, RedisHealth>()

/** The health of a control-plane connection (one watcher per client, made on first use). */
export function redisHealth (client: RedisClient, now?: () => number): RedisHealth {
  let health = healths.get(client)
  if (health === undefined) {
    health = new RedisHealth(client, now)
    healths.set(client, health)
  }
  return health
}

/** Calls `outcome` with every command sent on the client and its error (undefined on success). */
function observeCommands (client: RedisClient, outcome: (command: Command, err: unknown) => void): void {
  const target = client as unknown as { sendCommand: (command: Command, ...rest: unknown[]) => unknown }
  const send = target.sendCommand.bind(client)
  target.sendCommand = (command, ...rest) => {
    command.promise.then(() => { outcome(command, undefined) }, (err: unknown) => { outcome(command, err) })
    return send(command, ...rest)
  }
}
