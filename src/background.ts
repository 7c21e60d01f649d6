import type { EventEmitter } from 'node:events'
import type { Logger } from 'pino'

/** A periodic task: started once, stopped once; stopping waits for a run under way. */
export interface Periodic {
  /** Runs the work now, outside the timer (sharing a run already under way). */
  runNow: () => Promise<void>
  stop: () => Promise<void>
}

export interface PeriodicOptions {
  /** The pause between the end of one run and the start of the next; a function when it varies. */
  intervalMs: number | (() => number)
  /** Run once at start, before the first pause. */
  immediately?: boolean
  /**
   * A run that throws: the default logs it at debug level (the task's owner reports lasting trouble itself);
   * pass a handler that warns and counts where an operator should know.
   */
  onError?: (err: unknown) => void
  /** Counts every failed run (dbshift_background_errors_total{task}). */
  failures?: { inc: () => void }
  log: Logger
}

/**
 * The one shape of background work (polls, heartbeats, guard evaluations, the schedule runner): runs never
 * overlap, the timer never keeps the process alive, a failed run never stops the next one, and `stop()` leaves
 * nothing behind.
 */
export function every (name: string, work: () => Promise<void>, options: PeriodicOptions): Periodic {
  let timer: NodeJS.Timeout | undefined
  let running: Promise<void> | undefined
  let stopped = false
  const report = options.onError ?? ((err: unknown) => { options.log.debug({ err, task: name }, `${name} failed; trying again later`) })
  const onError = (err: unknown): void => {
    options.failures?.inc()
    report(err)
  }
  const interval = typeof options.intervalMs === 'number' ? () => options.intervalMs as number : options.intervalMs
  const run = async (): Promise<void> => {
    running ??= work().catch(onError).finally(() => { running = undefined })
    await running
  }
  // `run` settles without rejecting (onError has the failure); an onError that throws itself is logged here.
  const next = (): void => {
    run().catch((err: unknown) => { options.log.error({ err, task: name }, `${name}: its error handler failed`) }).finally(schedule)
  }
  const schedule = (): void => {
    if (stopped) return
    timer = setTimeout(next, interval())
    timer.unref()
  }
  if (options.immediately === true) next()
  else schedule()
  return {
    runNow: async () => {
      if (!stopped) await run()
    },
    stop: async () => {
      stopped = true
      clearTimeout(timer)
      await running
    }
  }
}

/** Listeners added to emitters someone else owns (Redis clients, the rollout sync), removed together. */
export class Listeners {
  readonly #added: Array<{ emitter: EventEmitter, event: string, listener: (...args: never[]) => void }> = []

  on<E extends EventEmitter>(emitter: E, event: string, listener: (...args: never[]) => void): void {
    (emitter as EventEmitter).on(event, listener as (...args: unknown[]) => void)
    this.#added.push({ emitter, event, listener })
  }

  removeAll (): void {
    for (const { emitter, event, listener } of this.#added.splice(0)) emitter.off(event, listener as (...args: unknown[]) => void)
  }
}

/**
 * Runs every step of a shutdown in order, each one even when an earlier one failed, and then throws one error
 * naming every step that failed.
 */
export async function closeAll (steps: Array<[name: string, step: () => unknown]>, log: Logger): Promise<void> {
  const failures: Array<{ name: string, err: unknown }> = []
  for (const [name, step] of steps) {
    try {
      await step()
    } catch (err) {
      log.error({ err, step: name }, `closing: ${name} failed; going on with the other steps`)
      failures.push({ name, err })
    }
  }
  if (failures.length > 0) {
    throw new AggregateError(failures.map((f) => f.err), `closing failed at ${failures.map((f) => f.name).join(', ')}`)
  }
}
