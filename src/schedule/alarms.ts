import type { Logger } from 'pino'
import type { RolloutControl } from '../control/commands.ts'
import type { GuardEmitter } from '../guards/events.ts'

/**
 * "Healthy for the whole bake" includes the guards in dry-run mode: when one would have tripped, the bake of the
 * step in force starts again. Any instance that sees the alarm writes it (the schedule is in Redis), not only the
 * lease holder. Returns the function that stops listening.
 */
export function restartBakeOnDryRun (events: GuardEmitter, control: RolloutControl, instanceId: string, log: Logger): () => void {
  const onDryRun = (level: string, reason: string): void => {
    control.restartBake(`${level} dry-run alarm: ${reason}`, { by: instanceId, source: 'guard' })
      .catch((err: unknown) => { log.warn({ err }, 'could not hold the ramp schedule for a dry-run alarm') })
  }
  events.on('dryRun', onDryRun)
  return () => { events.off('dryRun', onDryRun) }
}
