import { EventEmitter } from 'node:events'
import { every, type Periodic } from '../background.ts'
import type { ForwardHooks } from '../proxy/forward.ts'
import type { GuardContext, GuardEmitter, GuardEvents } from './events.ts'
import { ErrorRateGuard } from './l1-error-rate.ts'
import { DbLoadGuard } from './l2-db-load.ts'
import { ShadowGuard } from './l3-shadow.ts'
import { SignalPoll } from './signal-poll.ts'
import { WayBackGuard } from './way-back.ts'

export type { GuardContext, GuardEmitter, GuardEvents } from './events.ts'

export interface Guards {
  /** Hooks the forwarder calls: L2 pauses feature routes, L3 taps sampled exchanges. */
  hooks: ForwardHooks
  /** The way back: the lag, the verdict and the fence, on this instance. */
  wayBack: WayBackGuard
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
  const wayBack = new WayBackGuard(ctx, events, ctx.reverseLag, ctx.router)
  const keys = ctx.store.keys
  const lagKeys = wayBack.readsRedisSignal ? [keys.reverseLagSignal] : []
  const signals = new SignalPoll(ctx, [
    ...(l2?.readsRedisSignal === true ? [keys.dbLoadSignal] : []),
    ...(l2 !== undefined ? [keys.freeze] : []),
    ...(l3 !== undefined ? [keys.inconsistentSignal] : []),
    ...lagKeys,
    keys.dataRestoredSignal
  ], (values, ttls) => {
    // The L2 guard follows its own freezes only (a guard with no way back freezes the ramp too).
    l2?.onSignals(l2.readsRedisSignal ? values.get(keys.dbLoadSignal) : undefined, values.has(keys.freeze) ? values.get(keys.freeze)?.startsWith('L2') === true : undefined)
    if (l3 !== undefined && values.has(keys.inconsistentSignal)) l3.onSignal(values.get(keys.inconsistentSignal) ?? null)
    wayBack.onSignals(values.has(keys.reverseLagSignal) ? values.get(keys.reverseLagSignal) ?? null : undefined, ttls.get(keys.reverseLagSignal), values.get(keys.dataRestoredSignal) ?? null)
    events.emit('signals', values)
  }, lagKeys)

  const hooks: ForwardHooks = {}
  if (l2 !== undefined && rules.l2.featureRoutes.length > 0) hooks.pausedFor = (url) => l2.pausedFor(url)
  if (l3 !== undefined && rules.l3.sampleRate > 0) hooks.tap = (req, decision) => l3.tap(req, decision)
  hooks.fenced = (cls, route, key) => wayBack.fenced(cls, route, key)

  let evaluation: Periodic | undefined
  const state = (enabled: boolean, dryRun: boolean): Record<string, unknown> => ({ enabled, dryRun })
  return {
    hooks,
    events,
    wayBack,
    status: () => ({
      l1: { ...state(rules.l1.enabled, rules.l1.dryRun), ...l1?.status() },
      l2: { ...state(rules.l2.enabled, rules.l2.dryRun), ...l2?.status() },
      l3: { ...state(rules.l3.enabled, rules.l3.dryRun), ...l3?.status() },
      wayBack: wayBack.status()
    }),
    start: () => {
      // The L1 evaluation runs on the one shape of background work; a failed one is logged and the next goes on.
      if (l1 !== undefined) {
        evaluation = every('the L1 evaluation', async () => { await l1.evaluate() }, {
          intervalMs: rules.l1.evaluateIntervalMs,
          log: ctx.log,
          failures: ctx.metrics.backgroundErrors.labels('l1_evaluation'),
          onError: (err) => { ctx.log.warn({ err, guard: 'L1' }, 'L1 evaluation failed') }
        })
      }
      l2?.start()
      wayBack.start()
      signals.start()
    },
    close: async () => {
      await Promise.all([evaluation?.stop(), signals.close(), l2?.close(), wayBack.close()])
      await Promise.all([l1?.close(), l3?.close()])
    }
  }
}
