import { setTimeout as sleep } from 'node:timers/promises'
import type { Logger } from 'pino'

export interface WebhookOptions {
  timeoutMs: number
  /** Attempts after the first. */
  retries: number
  log: Logger
  /** The pause before retry n (1-based); doubles from 250 ms, at most 5 s. */
  backoffMs?: (retry: number) => number
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
      await res.arrayBuffer().catch(() => {})
      last = { ok: res.ok, attempts: attempt, status: res.status }
      if (res.ok) {
        options.log.info({ url, attempts: attempt, status: res.status }, 'webhook delivered')
        return last
      }
      if (res.status < 500 && res.status !== 408 && res.status !== 429) break // the receiver refuses it: retrying will not help
    } catch (err) {
      last = { ok: false, attempts: attempt, error: (err as Error).message }
    }
    options.log.warn({ url, attempt, status: last.status, error: last.error }, 'webhook attempt failed')
  }
  options.log.error({ url, attempts: last.attempts, status: last.status, error: last.error }, 'webhook could not be delivered; start the data rollback by hand')
  return last
}
