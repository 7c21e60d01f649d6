import type { IncomingHttpHeaders, IncomingMessage } from 'node:http'
import type { Dispatcher } from 'undici'
import type { ShadowResult } from '../metrics.ts'
import type { ResponseTap } from '../proxy/forward.ts'
import { createPools, type Pools } from '../proxy/pools.ts'
import { VERSIONS, type Decision, type Version } from '../routing/decide.ts'
import type { RolloutSnapshot } from '../rollout/snapshot.ts'
import { TrafficWindow } from '../traffic/window.ts'
import { compareAnswers, compileIgnore, type Answer } from './compare.ts'
import type { GuardContext, GuardEmitter } from './events.ts'
import { dryRunTrip, tripRollout } from './trip.ts'
import { postWebhook, type WebhookResult } from '../control/webhook.ts'

/** Request headers never copied to the shadow request (hop-by-hop, or meaningless without a body). */
const NOT_COPIED = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade',
  'host', 'expect', 'content-length', 'http2-settings', 'x-dbshift-version'])

/** Tells the upstream that a request is a shadow copy (its answer is compared, never shown to anyone). */
export const SHADOW_HEADER = 'x-dbshift-shadow'

/**
 * L3: data inconsistency. A sample of safe requests (GET and HEAD, never one with a body) is sent to the other
 * version too, after the user's answer is complete and on connections of its own, so the user's answer and its
 * latency never depend on it. The two answers are compared; when the mismatches in the window pass the
 * threshold, or when the external `signal:inconsistent` key is set, the rollout is rolled back at once and the
 * webhook is called so the data rollback can start.
 */
export class ShadowGuard {
  readonly #ctx: GuardContext
  readonly #events: GuardEmitter
  readonly #rules: GuardContext['config']['guards']['l3']
  readonly #methods: Set<string>
  readonly #ignore: string[][]
  readonly #pools: Pools
  /** Comparisons (requests) and mismatches (errors) over the window. */
  #window: TrafficWindow
  #inFlight = 0
  #dryRunTripped = false
  #signal: string | undefined
  #webhook: (WebhookResult & { at: string }) | undefined
  readonly #pending = new Set<Promise<unknown>>()

  constructor (ctx: GuardContext, events: GuardEmitter) {
    this.#ctx = ctx
    this.#events = events
    this.#rules = ctx.config.guards.l3
    this.#methods = new Set(this.#rules.methods)
    this.#ignore = compileIgnore(this.#rules.ignorePaths)
    this.#window = this.#newWindow()
    // Connections of its own, so shadow traffic never queues behind (or ahead of) users' requests.
    const config = ctx.config
    this.#pools = createPools({ ...config, upstream: { ...config.upstream, connections: this.#rules.maxConcurrent, headersTimeoutMs: this.#rules.timeoutMs, bodyTimeoutMs: this.#rules.timeoutMs } })
    ctx.sync.on('change', this.#onChange)
  }

  async close (): Promise<void> {
    this.#ctx.sync.off('change', this.#onChange)
    // Shadow copies are disposable: drop those still under way rather than wait for them.
    await Promise.all(VERSIONS.map(async (version) => await this.#pools[version].dispatcher.destroy()))
    await Promise.allSettled([...this.#pending])
  }

  /** Called by the forwarder for every request: undefined unless this one is sampled. */
  tap (req: IncomingMessage, decision: Decision): ResponseTap | undefined {
    if (this.#ctx.sync.current.rolledBack || !this.#methods.has(req.method ?? '')) return undefined
    if (req.headers['content-length'] !== undefined ? req.headers['content-length'] !== '0' : req.headers['transfer-encoding'] !== undefined) return undefined
    if (Math.random() >= this.#rules.sampleRate) return undefined
    const method = req.method as string
    const url = req.url ?? '/'
    const other: Version = decision.version === 'legacy' ? 'migrated' : 'legacy'
    const headers = shadowHeaders(req.headers, other)
    const max = this.#rules.maxBodyBytes
    const chunks: Buffer[] = []
    let size = 0
    let status = 0
    let answerHeaders: IncomingHttpHeaders = {}
    return {
      onResponse: (code, h) => { status = code; answerHeaders = h },
      onData: (chunk) => {
        size += chunk.length
        if (size <= max) chunks.push(Buffer.from(chunk)) // copied: the tap must not hold on to the proxy's buffers
      },
      onEnd: () => {
        const served: Answer = { status, contentType: header(answerHeaders, 'content-type'), contentEncoding: header(answerHeaders, 'content-encoding'), body: Buffer.concat(chunks) }
        // After the user's answer is out, on a later turn of the event loop: it never waits for this.
        setImmediate(() => this.#track(this.#shadow(method, url, headers, decision.version, other, size > max ? undefined : served)))
      },
      onError: () => {}
    }
  }

  /** The signal poll's reading of the external `signal:inconsistent` key (null = missing). */
  onSignal (text: string | null): void {
    const set = text !== null && text.trim() !== '' && text.trim() !== '0'
    if (!set) {
      this.#signal = undefined
      return
    }
    if (this.#signal === text && this.#rules.dryRun) return
    this.#signal = text
    if (this.#ctx.sync.current.rolledBack || this.#ctx.sync.current.fence?.level === 'L3') return
    this.#decide(`external signal ${this.#ctx.store.keys.inconsistentSignal} = ${JSON.stringify(text)}`, { signal: text })
  }

  status (): Record<string, unknown> {
    const { requests, errors } = this.#window.totals('migrated', this.#rules.windowMs)
    return {
      comparisons: requests,
      mismatches: errors,
      mismatchRate: requests === 0 ? 0 : Math.round((errors / requests) * 1e4) / 1e4,
      inFlight: this.#inFlight,
      signal: this.#signal ?? null,
      webhook: this.#webhook ?? null
    }
  }

  async #shadow (method: string, url: string, headers: Record<string, string | string[]>, served: Version, other: Version, answer: Answer | undefined): Promise<void> {
    if (answer === undefined || this.#inFlight >= this.#rules.maxConcurrent) return this.#record('skipped')
    const pool = this.#pools[other]
    this.#inFlight++
    let shadow: Answer | undefined
    try {
      const res = await pool.dispatcher.request({ path: pool.basePath + url, method: method as Dispatcher.HttpMethod, headers, signal: AbortSignal.timeout(this.#rules.timeoutMs) })
      const body = await readLimited(res.body, this.#rules.maxBodyBytes)
      if (body !== undefined) shadow = { status: res.statusCode, contentType: header(res.headers, 'content-type'), contentEncoding: header(res.headers, 'content-encoding'), body }
    } catch (err) {
      this.#ctx.log.debug({ err, version: other, method, url }, 'shadow request failed')
      return this.#record('error')
    } finally {
      this.#inFlight--
    }
    if (shadow === undefined) return this.#record('skipped')
    const comparison = await compareAnswers(answer, shadow, this.#ignore, method).catch(() => ({ match: false, where: 'body (could not be decoded)' }))
    if (!comparison.match) {
      this.#ctx.log.warn({ guard: 'L3', method, url, served, shadow: other, where: comparison.where, status: [answer.status, shadow.status] }, 'shadow comparison: the versions answered differently')
    }
    this.#record(comparison.match ? 'match' : 'mismatch')
  }

  #record (result: ShadowResult): void {
    this.#ctx.metrics.shadow.labels(result).inc()
    this.#events.emit('shadow', result)
    if (result !== 'match' && result !== 'mismatch') return
    this.#window.record('migrated', result === 'mismatch')
    const { requests, errors } = this.#window.totals('migrated', this.#rules.windowMs)
    const rate = errors / requests
    if (requests < this.#rules.minComparisons || rate <= this.#rules.mismatchRate) {
      this.#dryRunTripped = false
      return
    }
    if (this.#ctx.sync.current.rolledBack || (this.#rules.dryRun && this.#dryRunTripped)) return
    this.#decide(`${errors} of ${requests} shadow comparisons mismatched (${Math.round(rate * 1000) / 10}%) over ${this.#rules.windowMs / 1000} s > ${this.#rules.mismatchRate * 100}%`, { comparisons: requests, mismatches: errors })
  }

  /** Trips (or, in dry run, says it would), then calls the webhook so the data rollback can start. */
  #decide (reason: string, detail: Record<string, unknown>): void {
    if (this.#rules.dryRun) {
      this.#dryRunTripped = true
      return dryRunTrip(this.#ctx, this.#events, 'L3', reason, detail)
    }
    this.#track(tripRollout(this.#ctx, this.#events, 'L3', reason, detail).then(async ({ trip, outcome, fence }) => {
      const url = this.#rules.webhookUrl
      if (url === undefined || outcome === 'joined') return // whoever made the rollback calls it: once, not per instance
      // The fence id: the data-rollback job writes it to signal:data_restored when the data is back, which lifts the fence.
      const payload = { event: outcome === 'frozen' ? 'freeze' : 'rollback', rollout: this.#ctx.config.rollout.name, ...trip, fence: fence ?? this.#ctx.sync.current.fence?.id ?? null }
      const result = await postWebhook(url, payload, `${this.#ctx.config.rollout.name}:${trip.at}:${trip.by}`, {
        timeoutMs: this.#rules.webhookTimeoutMs,
        retries: this.#rules.webhookRetries,
        log: this.#ctx.log,
        giveUp: 'start the data rollback by hand'
      })
      this.#webhook = { ...result, at: new Date(this.#ctx.now()).toISOString() }
      this.#events.emit('webhook', result)
    }))
  }

  #track (work: Promise<unknown>): void {
    const tracked: Promise<unknown> = work
      .catch((err: unknown) => { this.#ctx.log.warn({ err, guard: 'L3' }, 'L3 guard step failed') })
      .finally(() => this.#pending.delete(tracked))
    this.#pending.add(tracked)
  }

  #newWindow (): TrafficWindow {
    return new TrafficWindow({ now: this.#ctx.now, slotMs: 1_000, slots: Math.ceil(this.#rules.windowMs / 1_000) + 1 })
  }

  /** A resume re-arms the guard: comparisons made before it no longer count. */
  readonly #onChange = (next: RolloutSnapshot, previous: RolloutSnapshot): void => {
    if (previous.rolledBack && !next.rolledBack) {
      this.#window = this.#newWindow()
      this.#dryRunTripped = false
    }
  }
}

function shadowHeaders (source: IncomingHttpHeaders, version: Version): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {}
  for (const name in source) {
    const value = source[name]
    if (value !== undefined && !NOT_COPIED.has(name)) headers[name] = value
  }
  headers['x-dbshift-version'] = version
  headers[SHADOW_HEADER] = '1'
  return headers
}

function header (headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>, name: string): string {
  const value = headers[name]
  return Array.isArray(value) ? value.join(', ') : value ?? ''
}

/** The whole body, or undefined (and the rest discarded) when it is longer than `max`. */
async function readLimited (body: AsyncIterable<Buffer> & { destroy: () => void }, max: number): Promise<Buffer | undefined> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += chunk.length
    if (size > max) {
      body.destroy()
      return undefined
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks)
}
