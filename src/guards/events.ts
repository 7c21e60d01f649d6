import type { EventEmitter } from 'node:events'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { RolloutControl, TripOutcome } from '../control/commands.ts'
import type { WebhookResult } from '../control/webhook.ts'
import type { Metrics, ShadowResult } from '../metrics.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutStore, Trip } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { TrafficWindow } from '../traffic/window.ts'
import type { Router } from '../routing/decide.ts'
import type { ReverseLag } from '../rollout/way-back.ts'
import type { Verdict } from './error-rate.ts'
import type { FleetTotals } from './fleet-counts.ts'

/** What the guards read and act on. app.ts is the one place where they meet the proxy. */
export interface GuardContext {
  config: Config
  instanceId: string
  sync: RolloutSync
  store: RolloutStore
  /** Every rollback and freeze a guard makes goes through the command layer. */
  control: RolloutControl
  redis: RedisClient
  traffic: TrafficWindow
  metrics: Metrics
  log: Logger
  now: () => number
  /** Decides who the moving cohort of a fence is. */
  router: Router
  /** The reverse lag readings, shared with the command layer's raise gate. */
  reverseLag: ReverseLag
}

/** One L1 evaluation: what was counted, where from, and the verdict. */
export interface L1Evaluation {
  at: number
  /** `fleet`: the whole fleet's counts from Redis; `local`: this instance's own, while Redis is away. */
  source: 'fleet' | 'local'
  totals: FleetTotals
  verdict: Verdict
}

/** What the guards do, as it happens: for tests, and for anything that wants to watch without polling. */
export interface GuardEvents {
  /** An L1 evaluation of the fleet's (or, with Redis away, the local) counts. */
  evaluated: [evaluation: L1Evaluation]
  /** A guard rolled the rollout back (or found it already rolled back: `joined`). */
  trip: [trip: Trip, outcome: TripOutcome]
  /** With no way back, a guard froze the ramp instead of rolling back. */
  frozenInstead: [level: 'L1' | 'L3', reason: string]
  /** The fence on the moving cohort's writes was lifted (how) or held on timeout. */
  fence: [what: 'released' | 'held', id: string, how: string]
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
