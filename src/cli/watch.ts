import { once } from 'node:events'
import { readFleet } from '../fleet/fleet.ts'
import { connectRedis } from '../rollout/redis.ts'
import type { AuditEntry } from '../rollout/store.ts'
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
  reader.on('error', () => {})
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
  const timer = setInterval(() => { rates().catch(() => {}) }, options.intervalMs)
  await rates().catch(() => {})

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
          const entry: AuditEntry = { id, fields: {} }
          for (let i = 0; i + 1 < flat.length; i += 2) entry.fields[flat[i] as string] = flat[i + 1] as string
          ctx.print(entryLine(entry), { type: 'change', ...entryJson(entry) })
          seen++
        }
      }
    }
  } finally {
    clearInterval(timer)
    process.off('SIGINT', stop)
    process.off('SIGTERM', stop)
    reader.disconnect()
  }
}

function clock (): string {
  return new Date().toISOString().slice(11, 19)
}
