import type { Registry } from 'prom-client'
import type { Config } from '../config.ts'
import type { RolloutControl } from '../control/commands.ts'
import type { Heartbeat } from '../fleet/heartbeat.ts'
import type { Guards } from '../guards/index.ts'
import type { PoolHealth } from '../health/pool-health.ts'
import type { Metrics } from '../metrics.ts'
import type { Router } from '../routing/decide.ts'
import type { RouteTable } from '../routing/routes.ts'
import type { RedisClient } from '../rollout/redis.ts'
import type { RolloutStore } from '../rollout/store.ts'
import type { RolloutSync } from '../rollout/sync.ts'
import type { ScheduleStore } from '../rollout/schedule-store.ts'
import type { TrafficWindow } from '../traffic/window.ts'

/** What the admin routes read, and the command layer they change the rollout through. */
export interface AdminOptions {
  config: Config
  instanceId: string
  sync: RolloutSync
  store: RolloutStore
  control: RolloutControl
  metrics: Metrics
  registry: Registry
  traffic: TrafficWindow
  router: Router
  redis: RedisClient
  guards: Guards
  schedules?: ScheduleStore
  heartbeat?: Heartbeat
  poolHealth?: PoolHealth
  /** The route table requests are matched against (a reload replaces its routes); built from config.routes when missing. */
  routes?: RouteTable
  now: () => number
}
