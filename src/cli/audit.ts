import type { CliContext } from './context.ts'
import { entryJson, entryLine } from './format.ts'

/** `dbshift audit [--count n]`: the newest changes, newest first. */
export async function audit (ctx: CliContext, count: number): Promise<void> {
  const entries = await ctx.store.audit(count)
  ctx.print(entries.length === 0 ? 'no changes recorded yet' : entries.map(entryLine).join('\n'), { entries: entries.map(entryJson) })
}
