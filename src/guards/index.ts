import { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { Metrics, ShadowResult } from '../metrics.ts'
import type { ForwardHooks } from '../proxy/forward.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutStore, Trip } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { TrafficWindow } from '../traffic/window.ts'
import { ErrorRateGuard, type L1Evaluation } from './l1-error-rate.ts'
import { DbLoadGuard } from './l2-db-load.ts'
import { ShadowGuard } from './l3-shadow.ts'
import { SignalPoll } from './signal-poll.ts'
import type { TripOutcome } from './trip.ts'
import type { WebhookResult } from './webhook.ts'

/** What the guards read and act on. app.ts is the one place where they meet the proxy. */
export interface GuardContext {
  config: Config
  instanceId: string
  sync: RolloutSync
  store: RolloutStore
  redis: RedisClient
  traffic: TrafficWindow
  metrics: Metrics
  log: Logger
  now: () => number
}

/** What the guards do, as it happens: for tests, and for anything that wants to watch without polling. */
export interface GuardEvents {
  /** An L1 evaluation of the fleet's (or, with Redis away, the local) counts. */
  evaluated: [evaluation: L1Evaluation]
  /** A guard rolled the rollout back (or found it already rolled back: `joined`). */
  trip: [trip: Trip, outcome: TripOutcome]
  /** A guard in dry-run mode would have tripped. */
  dryRun: [level: 'L1' | 'L2' | 'L3', reason: string]
  /** The signal keys were read (key → value, null when missing). */
  signals: [values: Map<string, string | null>]
  /** L2 paused (true) or reopened (false) the new-feature routes. */
  l2: [paused: boolean, reason: string]
  /** One shadow comparison finished. */
  shadow: [result: ShadowResult]
  /** The L3 webhook was delivered, or gave up. */
  webhook: [result: WebhookResult]
}

export type GuardEmitter = EventEmitter<GuardEvents>

export interface Guards {
  /** Hooks the forwarder calls: L2 pauses feature routes, L3 taps sampled exchanges. */
  hooks: ForwardHooks
  /** What each guard sees now, for /status. */
  status: () => Record<string, unknown>
  events: GuardEmitter
  start: () => void
  close: () => Promise<void>
}

/** The automatic rollback guards (L1 error rate, L2 database load, L3 data inconsistency). */
export function createGuards (ctx: GuardContext): Guards {
  const rules = ctx.config.guards
  for (const level of ['L1', 'L2', 'L3'] as const) {
    const guard = rules[level.toLowerCase() as 'l1' | 'l2' | 'l3']
    const threshold = level === 'L1' ? rules.l1.errorRate : level === 'L2' ? rules.l2.threshold : rules.l3.mismatchRate
    ctx.metrics.guardThreshold.labels(level).set(guard.enabled ? threshold : 0)
  }
  const events: GuardEmitter = new EventEmitter<GuardEvents>()
  const l1 = rules.l1.enabled ? new ErrorRateGuard(ctx, events) : undefined
  const l2 = rules.l2.enabled ? new DbLoadGuard(ctx, events) : undefined
  const l3 = rules.l3.enabled ? new ShadowGuard(ctx, events) : undefined
  const keys = ctx.store.keys
  const signals = new SignalPoll(ctx, [
    ...(l2?.readsRedisSignal === true ? [keys.dbLoadSignal] : []),
    ...(l2 !== undefined ? [keys.freeze] : []),
    ...(l3 !== undefined ? [keys.inconsistentSignal] : [])
  ], (values) => {
    l2?.onSignals(l2.readsRedisSignal ? values.get(keys.dbLoadSignal) : undefined, values.has(keys.freeze) ? values.get(keys.freeze) !== null : undefined)
    if (l3 !== undefined && values.has(keys.inconsistentSignal)) l3.onSignal(values.get(keys.inconsistentSignal) ?? null)
    events.emit('signals', values)
  })

  const hooks: ForwardHooks = {}
  if (l2 !== undefined && rules.l2.featureRoutes.length > 0) hooks.pausedFor = (url) => l2.pausedFor(url)
  if (l3 !== undefined && rules.l3.sampleRate > 0) hooks.tap = (req, decision) => l3.tap(req, decision)

  const state = (enabled: boolean, dryRun: boolean): Record<string, unknown> => ({ enabled, dryRun })
  return {
    hooks,
    events,
    status: () => ({
      l1: { ...state(rules.l1.enabled, rules.l1.dryRun), ...l1?.status() },
      l2: { ...state(rules.l2.enabled, rules.l2.dryRun), ...l2?.status() },
      l3: { ...state(rules.l3.enabled, rules.l3.dryRun), ...l3?.status() }
    }),
    start: () => {
      l1?.start()
      l2?.start()
      signals.start()
    },
    close: async () => {
      signals.close()
      l2?.close()
      await Promise.all([l1?.close(), l3?.close()])
    }
  }
}
