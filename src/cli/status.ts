import { readFleet, type FleetMember } from '../fleet/fleet.ts'
import { describeProgress } from '../rollout/schedule.ts'
import type { CliContext } from './context.ts'
import { ago, entryJson, entryLine, table } from './format.ts'
import { fenceLine } from './way-back.ts'

/** `dbshift status`: the dial, the trip, the freeze, the schedule, the last change and the fleet. */
export async function status (ctx: CliContext): Promise<void> {
  const now = Date.now()
  const shared = await ctx.store.read()
  const [{ schedule }, [last]] = await Promise.all([ctx.schedules.read(), ctx.store.audit(1)])
  const { freeze } = shared
  const allow = shared.allow.length
  const deny = shared.deny.length
  const fleet = await readFleet(ctx.redis, ctx.keys, shared, now)
  const behind = fleet.filter((member) => member.behind !== null).length
  const trip = shared.trip ?? null
  const verdict = await ctx.control.wayBackVerdict()
  // A raise made by hand while the way back was not ready: flagged until a change through dbshift sets the dial again.
  const recent = await ctx.store.audit(50)
  const handRaise = recent.find((e) => e.fields.action === 'set_percent' || (e.fields.action === 'hand_set' && e.fields.key === 'percent'))
  const flagged = handRaise?.fields.way_back === undefined ? undefined : handRaise

  const lines = [
    `rollout      ${ctx.config.rollout.name}  (${ctx.keys.percent.replace(/:percent$/, ':*')})`,
    `percent      ${shared.found.percent === 'invalid' ? '?  (Redis holds an invalid value: every instance keeps its last valid percentage)' : `${shared.percent}%${shared.found.percent === 'missing' ? '  (no value in Redis: the initial percentage)' : ''}`}`,
    `writes       ${shared.writePercent === undefined ? '—  (no write_percent: writes follow percent)' : `${shared.writePercent}%${shared.writePercent >= shared.percent ? '  (at or above percent: writes follow percent)' : '  (writes are migrated below min(write_percent, percent))'}`}`,
    ...(ctx.config.routes.length === 0 ? [] : [`routes       ${ctx.config.routes.map((route) => `${route.name} ${route.mode}${route.mode === 'split' ? ` ${shared.routePercent.has(route.name) ? `${shared.routePercent.get(route.name) ?? ''}%` : '(follows percent)'}` : ''}`).join(' · ')}`]),
    `state        ${shared.state}${shared.state === 'rolled_back' ? '  (everyone on legacy; "dbshift resume" re-arms the rollout)' : ''}`,
    `trip         ${trip === null ? '—' : `${trip.level} at ${trip.at} by ${trip.by}: ${trip.reason}`}`,
    `freeze       ${freeze === null ? '—' : `frozen by the L2 guard: ${freeze} (raises are refused)`}`,
    `way back     ${verdict.mode}: rollback ${verdict.safe ? 'safe' : 'NOT safe'} (${verdict.why})`,
    `fence        ${fenceLine(shared.fence)}`,
    ...(flagged === undefined ? [] : [`warning      percent set to ${flagged.fields.new ?? '?'} by hand: ${flagged.fields.way_back ?? ''}`]),
    `overrides    allow ${allow}, deny ${deny}`,
    `ramp         ${schedule === undefined ? '—' : describeProgress(schedule, now)}`,
    `last change  ${last === undefined ? '—' : entryLine(last)}`,
    ...shared.invalid.map((value) => `warning      ${value.key} = ${JSON.stringify(value.value)} is ignored: it must be ${value.rule}`),
    '',
    fleetText(fleet, behind, now)
  ]
  ctx.print(lines.join('\n'), {
    rollout: ctx.config.rollout.name,
    percent: shared.percent,
    writePercent: shared.writePercent ?? null,
    routes: ctx.config.routes.map((route) => ({ name: route.name, mode: route.mode, percent: shared.routePercent.get(route.name) ?? null })),
    state: shared.state,
    trip,
    freeze,
    wayBack: { mode: verdict.mode, rollbackSafe: verdict.safe, why: verdict.why, lagSeconds: verdict.lagSeconds },
    fence: shared.fence ?? null,
    handRaise: flagged === undefined ? null : entryJson(flagged),
    allow,
    deny,
    invalid: shared.invalid,
    schedule: schedule === undefined ? null : { ...schedule, progress: describeProgress(schedule, now) },
    lastChange: last === undefined ? null : entryJson(last),
    fleet: { instances: fleet, behind }
  })
}

export function fleetText (fleet: FleetMember[], behind: number, now: number): string {
  if (fleet.length === 0) return 'fleet        no dbshift instance has reported (none running, or none can reach this Redis)'
  const head = `fleet        ${fleet.length} instance${fleet.length === 1 ? '' : 's'}, ${behind === 0 ? 'all on the shared state' : `${behind} behind`}`
  const rows = [['', 'INSTANCE', 'PERCENT', 'STATE', 'HEARD', 'LEGACY rps', 'err', 'MIGRATED rps', 'err', '']]
  for (const m of fleet) {
    rows.push([m.behind === null ? ' ' : '!', m.id, `${m.percent}%`, m.state, m.lastSyncAt === 0 ? 'never' : ago(m.lastSyncAt, now),
      String(m.traffic.legacy.rps), pct(m.traffic.legacy.errorRate), String(m.traffic.migrated.rps), pct(m.traffic.migrated.errorRate), m.behind ?? ''])
  }
  return `${head}\n${table(rows)}`
}

function pct (ratio: number): string {
  return `${Math.round(ratio * 1000) / 10}%`
}
