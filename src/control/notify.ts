import type { Logger } from 'pino'
import type { Actor } from './audit.ts'
import { postWebhook } from './webhook.ts'

/** The actions operators hear about. */
export type NotifyAction = 'trip' | 'rollback' | 'resume' | 'freeze' | 'unfreeze' | 'way_back' | 'fence' | 'fence_release' | 'fence_hold' | 'fence_timeout' | 'rollback_refused'

export interface NotifyEvent {
  action: NotifyAction
  actor: Actor
  reason: string
  /** The guard level of a trip or rollback (L1, L3, manual). */
  level?: string
  /** ms since the epoch. */
  at: number
  /** This instance's rollback is not yet in Redis. */
  pending?: boolean
  /** The fence this event is about. */
  fence?: string
}

export interface NotifyOptions {
  webhookUrl?: string
  timeoutMs: number
  retries: number
  rollout: string
  log: Logger
  /** Counts notifications that could not be delivered. */
  failures?: { inc: () => void }
}

const WHAT: Record<NotifyAction, string> = {
  trip: 'rolled back by a guard: everyone is on legacy',
  rollback: 'rolled back: everyone is on legacy',
  resume: 'resumed: the rollout follows its percentage again',
  freeze: 'ramp frozen: raises of the percentage are refused',
  unfreeze: 'ramp freeze lifted',
  way_back: 'the way back changed',
  fence: 'writes fenced: the moving cohort\'s writes are held until legacy has their data',
  fence_release: 'fence lifted: the moving cohort writes to legacy again',
  fence_hold: 'fence timed out and is held: writes stay refused until "dbshift fence release"',
  fence_timeout: 'UNSAFE: fence released on timeout before the reverse sync caught up; writes may be missing on legacy',
  rollback_refused: 'no way back: the guards froze the ramp instead of rolling back'
}

/**
 * Tells `notify.webhookUrl` about every action that moves users or stops the ramp: JSON with a readable `text`
 * (what a Slack-compatible incoming webhook shows) and the fields a program reads. Sent in the background with
 * retries and a timeout: the action never waits for it, and a failure is logged with its cause.
 */
export class Notifier {
  readonly #o: NotifyOptions
  readonly #pending = new Set<Promise<unknown>>()

  constructor (options: NotifyOptions) {
    this.#o = options
  }

  send (event: NotifyEvent): void {
    const url = this.#o.webhookUrl
    if (url === undefined) return
    const { rollout } = this.#o
    const at = new Date(event.at).toISOString()
    const level = event.level === undefined ? '' : ` (${event.level})`
    const text = `dbshift ${rollout}: ${WHAT[event.action]}${level}${event.reason === '' ? '' : ` — ${event.reason}`}; by ${event.actor.by} (${event.actor.source})${event.pending === true ? '; not yet written to Redis' : ''}`
    const payload = { text, event: event.action, rollout, level: event.level ?? null, reason: event.reason, by: event.actor.by, source: event.actor.source, at, ...(event.fence === undefined ? {} : { fence: event.fence }) }
    const sent = postWebhook(url, payload, `${rollout}:${event.action}:${event.at}:${event.actor.by}`, {
      timeoutMs: this.#o.timeoutMs,
      retries: this.#o.retries,
      log: this.#o.log,
      what: 'notification'
    }).then((result) => {
      if (!result.ok) this.#o.failures?.inc()
    }).finally(() => this.#pending.delete(sent))
    this.#pending.add(sent)
  }

  /** Waits for the notifications under way (each is bounded by its timeout and retries). */
  async flush (): Promise<void> {
    await Promise.allSettled([...this.#pending])
  }
}
