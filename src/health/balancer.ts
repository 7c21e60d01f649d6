import type { IncomingHttpHeaders } from 'node:http'
import type { Duplex } from 'node:stream'
import { Dispatcher } from 'undici'
import { classifyUpstreamError } from '../proxy/upstream-errors.ts'
import type { Version } from '../routing/decide.ts'
import type { Member } from './member.ts'

/**
 * A pool's dispatcher: one undici Pool per member, each request sent round-robin to a member that takes new
 * requests (its checks pass and it is not ejected). When none does, every member is tried: a guess beats a
 * certain 502, and the retry in the same pool moves on to the next one.
 *
 * Why not BalancedPool with removeUpstream/addUpstream: removing a member closes its pool, so re-admitting it
 * costs new connections, and BalancedPool's own weighting would still steer by connection errors alone. Here the
 * choice is an index into an array rebuilt only when a member's state changes, and the handler that watches each
 * answer for the outlier count is taken from a free list: the hot path allocates nothing of its own.
 */
export class Balancer extends Dispatcher {
  readonly version: Version
  readonly members: readonly Member[]
  /** The members that take new requests, rebuilt on every change of state. */
  #serving: Member[]
  #next = 0
  #inFlight = 0
  #drained: (() => void) | undefined
  readonly #free: Outcome[] = []

  constructor (version: Version, members: Member[]) {
    super()
    this.version = version
    this.members = members
    this.#serving = members.slice()
    for (const member of members) {
      member.onChange(() => this.#rebuild())
      member.pool.on('drain', (origin) => this.emit('drain', origin)) // a busy member can take requests again
    }
  }

  /** Requests sent through this dispatcher whose answer is not complete yet. */
  get inFlight (): number {
    return this.#inFlight
  }

  override dispatch (options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const list = this.#serving.length > 0 ? this.#serving : this.members
    if (this.#next >= list.length) this.#next = 0
    const member = list[this.#next++] as Member
    // Handlers of the old shape (undici's own request() and upgrade()) are passed through, uncounted.
    if (handler.onRequestStart === undefined) return member.pool.dispatch(options, handler)
    const outcome = this.#free.pop() ?? new Outcome(this)
    outcome.member = member
    outcome.handler = handler
    this.#inFlight++
    try {
      return member.pool.dispatch(options, outcome)
    } catch (err) {
      this.release(outcome) // refused before it started (bad options): it will never end
      throw err
    }
  }

  /** Waits until the requests in flight are answered (a reload's old pool), then closes every member's pool. */
  override async close (): Promise<void> {
    if (this.#inFlight > 0) await new Promise<void>((resolve) => { this.#drained = resolve })
    await Promise.all(this.members.map(async (member) => { member.close(); await member.pool.close() }))
  }

  override async destroy (): Promise<void> {
    await Promise.all(this.members.map(async (member) => { member.close(); await member.pool.destroy() }))
  }

  /** @internal called by an Outcome when its request is over. */
  release (outcome: Outcome): void {
    outcome.member = undefined
    outcome.handler = undefined
    this.#free.push(outcome)
    if (--this.#inFlight === 0 && this.#drained !== undefined) {
      this.#drained()
      this.#drained = undefined
    }
  }

  #rebuild (): void {
    this.#serving = this.members.filter((member) => member.serving)
  }
}

/** Relays one request's events to the forwarder's handler and tells the member how the answer went. */
class Outcome implements Dispatcher.DispatchHandler {
  member: Member | undefined
  handler: Dispatcher.DispatchHandler | undefined
  readonly #balancer: Balancer

  constructor (balancer: Balancer) {
    this.#balancer = balancer
  }

  onRequestStart (controller: Dispatcher.DispatchController, context: unknown): void {
    this.handler?.onRequestStart?.(controller, context)
  }

  onRequestUpgrade (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
    const handler = this.handler
    this.member?.succeeded()
    this.#balancer.release(this)
    handler?.onRequestUpgrade?.(controller, statusCode, headers, socket)
  }

  onResponseStart (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    if (statusCode >= 500) this.member?.failed()
    else if (statusCode >= 200) this.member?.succeeded()
    this.handler?.onResponseStart?.(controller, statusCode, headers, statusMessage)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.handler?.onResponseData?.(controller, chunk)
  }

  onResponseEnd (controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    const handler = this.handler
    this.#balancer.release(this)
    handler?.onResponseEnd?.(controller, trailers)
  }

  onResponseError (controller: Dispatcher.DispatchController, err: Error): void {
    const handler = this.handler
    // The one table of transport errors decides what counts against the member; an abort by the client does not.
    if (this.member !== undefined && classifyUpstreamError(err, this.#balancer.version).reason !== 'other') this.member.failed()
    // The handler may retry at once, through this balancer: it takes another Outcome, so in-flight never reaches 0 between.
    handler?.onResponseError?.(controller, err)
    this.#balancer.release(this)
  }
}
