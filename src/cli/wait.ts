import { readFleet, type FleetMember } from '../fleet/fleet.ts'
import type { CliContext } from './context.ts'

export interface FleetConfirmation {
  /** Every live instance applies the shared state (true also when no instance reported). */
  confirmed: boolean
  instances: number
  behind: Array<{ id: string, behind: string }>
}

/**
 * `--wait`: after a change, waits until every live instance reports (by heartbeat) that it applies the shared
 * state, or until the time is up: the answer to "is every sidecar on it?" without a second command.
 */
export async function waitForFleet (ctx: CliContext, timeoutMs: number): Promise<FleetConfirmation> {
  const deadline = Date.now() + timeoutMs
  let fleet: FleetMember[] = []
  for (;;) {
    const shared = await ctx.store.read()
    fleet = await readFleet(ctx.redis, ctx.keys, shared, Date.now())
    const behind = fleet.filter((m) => m.behind !== null).map((m) => ({ id: m.id, behind: m.behind as string }))
    if (behind.length === 0 || Date.now() >= deadline) return { confirmed: behind.length === 0, instances: fleet.length, behind }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** One line about the confirmation, for the human output. */
export function confirmationText (c: FleetConfirmation, timeoutMs: number): string {
  if (c.instances === 0) return 'no dbshift instance has reported: nothing to confirm'
  if (c.confirmed) return `every instance (${c.instances}) applies it`
  return `not confirmed within ${timeoutMs / 1000} s: ${c.behind.length} of ${c.instances} behind (${c.behind.map((m) => `${m.id}: ${m.behind}`).join('; ')})`
}
