import { unwrap } from '../control/results.ts'
import type { CliContext } from './context.ts'

/** `dbshift way-back [mode]`: shows the way back and whether a rollback now is safe, or declares the mode. */
export async function wayBack (ctx: CliContext, mode: string | undefined, reason: string): Promise<void> {
  if (mode !== undefined) {
    const result = unwrap(await ctx.control.setWayBack(mode, ctx.actor, reason))
    const human = result.status === 'noop' ? `way back already ${result.mode}: nothing changed` : `way back ${result.previous} → ${result.mode}`
    ctx.print(human, { mode: result.mode, previous: result.previous, changed: result.status === 'ok' })
    return
  }
  const verdict = await ctx.control.wayBackVerdict()
  const shared = await ctx.store.read()
  ctx.print([
    `way back     ${verdict.mode}`,
    `rollback     ${verdict.safe ? 'safe' : 'NOT safe'}: ${verdict.why}`,
    `raises       ${verdict.mode !== 'reverse_sync' || verdict.ready ? 'allowed' : 'refused (the reverse lag must be known and low)'}`,
    `fence        ${fenceLine(shared.fence)}`
  ].join('\n'), { mode: verdict.mode, rollbackSafe: verdict.safe, why: verdict.why, lagSeconds: verdict.lagSeconds, raisesAllowed: verdict.mode !== 'reverse_sync' || verdict.ready, fence: shared.fence ?? null })
}

/** `dbshift fence`: the fence on the moving cohort's writes, if any. */
export async function showFence (ctx: CliContext): Promise<void> {
  const { fence } = await ctx.store.read()
  ctx.print(`fence        ${fenceLine(fence)}`, { fenced: fence !== undefined, fence: fence ?? null })
}

/** `dbshift fence release [--reason]`: lifts the fence by hand (the moving cohort writes to legacy again). */
export async function releaseFence (ctx: CliContext, reason: string): Promise<void> {
  const result = unwrap(await ctx.control.releaseFence(undefined, 'operator', ctx.actor, reason))
  ctx.print(result.status === 'ok' ? `fence ${result.fence} released: the moving cohort writes to legacy again` : 'no fence in force: nothing changed', { released: result.status === 'ok', fence: result.status === 'ok' ? result.fence : null })
}

export function fenceLine (fence: { id: string, level: string, reason: string, at: number, deadline: number | undefined, held: boolean } | undefined): string {
  if (fence === undefined) return '—'
  const until = fence.level === 'L3'
    ? 'until signal:data_restored holds its id or "dbshift fence release"'
    : fence.held ? 'timed out and held until "dbshift fence release"' : `until the reverse sync catches up past ${new Date(fence.at).toISOString()}, at most until ${fence.deadline === undefined ? '—' : new Date(fence.deadline).toISOString()}`
  return `${fence.id} (${fence.level}) since ${new Date(fence.at).toISOString()}: the moving cohort's writes get 503, ${until} — ${fence.reason}`
}
