import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import type { Decision } from '../routing/decide.ts'
import type { RequestClass, Route } from '../routing/routes.ts'
import type { UserKeyReader } from '../routing/user-key.ts'
import type { OpenConnections } from './connections.ts'
import type { ForwardHooks, ResponseTap } from './forward.ts'

const EVENT_STREAM = 'text/event-stream'

/**
 * Tracks event streams (a 200 with `Content-Type: text/event-stream` to a request that accepts one, as every
 * EventSource sends) as long-lived connections, so that they follow the rollout: when the user's version changes,
 * the stream is ended cleanly and the client reconnects to the version it now gets.
 *
 * Other long answers (a chunked download, a long poll) are relayed as they arrive but never ended early: ending a
 * chunked body cleanly would hand the client a truncated answer that looks complete.
 */
export class StreamTracker {
  readonly #responses = new WeakMap<IncomingMessage, ServerResponse>()
  readonly #connections: OpenConnections
  readonly #keyReader: UserKeyReader
  readonly #inner: ForwardHooks['tap']

  constructor (connections: OpenConnections, keyReader: UserKeyReader, inner?: ForwardHooks['tap']) {
    this.#connections = connections
    this.#keyReader = keyReader
    this.#inner = inner
  }

  /** Called before a request is forwarded: remembers the answer of one that accepts an event stream. */
  watch (req: IncomingMessage, res: ServerResponse): void {
    if (acceptsEventStream(req.headers.accept)) this.#responses.set(req, res)
  }

  /** The forwarder's tap hook: the other taps' (shadow comparison), and ours for watched requests. */
  readonly tap = (req: IncomingMessage, decision: Decision, route: Route, cls: RequestClass): ResponseTap | undefined => {
    const inner = this.#inner?.(req, decision, route, cls)
    const res = this.#responses.get(req)
    if (res === undefined) return inner
    this.#responses.delete(req)
    return {
      onResponse: (status, headers) => {
        if (status === 200 && isEventStream(headers)) this.#track(req, res, decision, route, cls)
        inner?.onResponse(status, headers)
      },
      onData: (chunk) => { inner?.onData(chunk) },
      onEnd: () => { inner?.onEnd() },
      onError: () => { inner?.onError() }
    }
  }

  /** Decided again, on a change of the rollout, on the route and class it was first decided on. */
  #track (req: IncomingMessage, res: ServerResponse, decision: Decision, route: Route, cls: RequestClass): void {
    if (res.destroyed) return
    const closed = new Promise<void>((resolve) => res.once('close', resolve))
    const remove = this.#connections.add({
      version: decision.version,
      kind: 'stream',
      route,
      cls,
      key: this.#keyReader.read(req.headers, req.rawHeaders),
      close: async () => {
        // The upstream's next event may still be on its way after our end: dropped, not an error of the process.
        res.on('error', () => {})
        if (!res.writableEnded) res.end()
        await closed
      }
    })
    closed.then(remove, remove)
  }
}

function acceptsEventStream (accept: string | undefined): boolean {
  return accept !== undefined && accept.includes(EVENT_STREAM)
}

function isEventStream (headers: IncomingHttpHeaders): boolean {
  const type = headers['content-type']
  return type !== undefined && type.toLowerCase().startsWith(EVENT_STREAM)
}
