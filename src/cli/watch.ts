import { once } from 'node:events'
import { every } from '../background.ts'
import { readFleet } from '../fleet/fleet.ts'
import { connectRedis } from '../rollout/redis.ts'
import { auditEntry } from '../rollout/store.ts'
import type { CliContext } from './context.ts'
import { entryJson, entryLine } from './format.ts'

export interface WatchOptions {
  /** How often the fleet's rates are printed. */
  intervalMs: number
  /** Stop after this many changes (for scripts); undefined = until Ctrl-C. */
  count: number | undefined
}

/**
 * `dbshift watch`: every change as it is recorded (from any source: the audit stream, read with a blocking
 * XREAD), and every few seconds the shared state with the fleet's per-version rates.
 */
export async function watch (ctx: CliContext, options: WatchOptions): Promise<void> {
  const reader = connectRedis(ctx.config.redis.url, { commandTimeoutMs: 5_000, connectionName: 'dbshift-cli-watch' })
  // Failures show in the reads below; ioredis needs a listener, or an error would end the command.
  reader.on('error', (err: Error) => { ctx.log.debug({ err }, 'the watch connection failed') })
  if (reader.status !== 'ready') await once(reader, 'ready')
  const run = { stopped: false }
  const stop = (): void => {
    run.stopped = true
    reader.disconnect()
  }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  if (!ctx.json) process.stdout.write(`watching rollout ${ctx.config.rollout.name} (Ctrl-C to stop)\n`)
  else ctx.print('', { type: 'watching', rollout: ctx.config.rollout.name })

  const rates = async (): Promise<void> => {
    const shared = await ctx.store.read()
    const fleet = await readFleet(ctx.redis, ctx.keys, shared, Date.now())
    const sum = (version: 'legacy' | 'migrated'): { rps: number, errorRate: number } => {
      const rps = fleet.reduce((total, m) => total + m.traffic[version].rps, 0)
      const errors = fleet.reduce((total, m) => total + m.traffic[version].rps * m.traffic[version].errorRate, 0)
      return { rps: Math.round(rps * 100) / 100, errorRate: rps === 0 ? 0 : Math.round((errors / rps) * 1e4) / 1e4 }
    }
    const legacy = sum('legacy')
    const migrated = sum('migrated')
    const behind = fleet.filter((m) => m.behind !== null).length
    ctx.print(`${clock()}  ${shared.percent}% ${shared.state} · ${fleet.length} instance(s), ${behind} behind · legacy ${legacy.rps} rps ${(legacy.errorRate * 100).toFixed(1)}% err · migrated ${migrated.rps} rps ${(migrated.errorRate * 100).toFixed(1)}% err`,
      { type: 'rates', percent: shared.percent, state: shared.state, instances: fleet.length, behind, legacy, migrated })
  }
  let failing = false
  const ratesTask = every('the fleet rates', async () => {
    await rates()
    failing = false
  }, {
    intervalMs: options.intervalMs,
    immediately: true,
    log: ctx.log,
    onError: (err) => {
      if (!failing) ctx.log.warn({ err }, 'reading the fleet\'s rates failed; trying again')
      failing = true
    }
  })
  await ratesTask.runNow()

  let seen = 0
  let lastId = '$'
  try {
    while (!run.stopped && (options.count === undefined || seen < options.count)) {
      const reply = await reader.xread('BLOCK', 1_000, 'STREAMS', ctx.keys.audit, lastId).catch((err: Error) => {
        if (run.stopped) return null
        throw err
      }) as Array<[string, Array<[string, string[]]>]> | null
      for (const [, entries] of reply ?? []) {
        for (const [id, flat] of entries) {
          lastId = id
          const entry = auditEntry(id, flat)
          ctx.print(entryLine(entry), { type: 'change', ...entryJson(entry) })
          seen++
        }
      }
    }
  } finally {
    await ratesTask.stop()
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
    reader.disconnect()
  }
}

function clock (): string {
  return new Date().toISOString().slice(11, 19)
}
