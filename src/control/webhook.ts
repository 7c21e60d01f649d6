import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'

export interface WebhookOptions {
  timeoutMs: number
  /** Attempts after the first. */
  retries: number
  log: Logger
  /** The pause before retry n (1-based); doubles from 250 ms, at most 5 s. */
  backoffMs?: (retry: number) => number
  /** What is being delivered, for the log lines (default "webhook"). */
  what?: string
  /** What the operator should do when it is not delivered, appended to the final error line. */
  giveUp?: string
}

export interface WebhookResult {
  ok: boolean
  attempts: number
  status?: number
  error?: string
}

const defaultBackoff = (retry: number): number => Math.min(250 * 2 ** (retry - 1), 5_000)

/**
 * POSTs a JSON event to a webhook, each attempt bounded by `timeoutMs`, retrying a failure (no answer, a 5xx,
 * a 408 or a 429) up to `retries` times. The `Idempotency-Key` header is the same on every attempt, so the
 * receiver can tell a retry from a second event. Never throws.
 */
export async function postWebhook (url: string, payload: Record<string, unknown>, idempotencyKey: string, options: WebhookOptions): Promise<WebhookResult> {
  const body = JSON.stringify(payload)
  const backoff = options.backoffMs ?? defaultBackoff
  let last: WebhookResult = { ok: false, attempts: 0 }
  for (let attempt = 1; attempt <= options.retries + 1; attempt++) {
    if (attempt > 1) await sleep(backoff(attempt - 1))
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': idempotencyKey, 'user-agent': 'dbshift' },
        body,
        signal: AbortSignal.timeout(options.timeoutMs)
      })
      // The answer's body means nothing here; reading it frees the connection, and a broken one changes nothing.
      await res.arrayBuffer().catch(() => undefined)
      last = { ok: res.ok, attempts: attempt, status: res.status }
      if (res.ok) {
        options.log.info({ url, attempts: attempt, status: res.status }, `${options.what ?? 'webhook'} delivered`)
        return last
      }
      if (res.status < 500 && res.status !== 408 && res.status !== 429) break // the receiver refuses it: retrying will not help
    } catch (err) {
      last = { ok: false, attempts: attempt, error: causeOf(err, options.timeoutMs) }
    }
    options.log.warn({ url, attempt, status: last.status, error: last.error }, `${options.what ?? 'webhook'} attempt failed`)
  }
  const cause = last.error ?? `HTTP ${last.status ?? '?'}`
  options.log.error({ url, attempts: last.attempts, status: last.status, error: last.error }, `${options.what ?? 'webhook'} could not be delivered (${cause})${options.giveUp === undefined ? '' : `; ${options.giveUp}`}`)
  return last
}

/**
 * Why an attempt failed, in words an operator can act on: fetch says only "fetch failed" and keeps the reason
 * (ECONNREFUSED, a DNS failure, a TLS error) in its cause.
 */
function causeOf (err: unknown, timeoutMs: number): string {
  const error = err as Error & { cause?: { code?: string, message?: string } }
  if (error.name === 'TimeoutError') return `no answer within ${timeoutMs} ms`
  const cause = error.cause
  if (cause === undefined) return error.message
  return [cause.code, cause.message].filter((part) => part !== undefined && part !== '').join(': ') || error.message
}
