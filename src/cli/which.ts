import { InvalidValueError } from '../errors.ts'
import { thresholdOf } from '../routing/bucket.ts'
import { explain, explainRoutes, routerFor } from '../routing/configured.ts'
import { RouteTable } from '../routing/routes.ts'
import { fromByteString, MAX_KEY_BYTES } from '../routing/user-key.ts'
import { initialSnapshot, nextSnapshot } from '../rollout/snapshot.ts'
import type { CliContext } from './context.ts'

const WHY: Record<string, string> = {
  rolled_back: 'the rollout is rolled back: everyone goes to legacy',
  deny: 'the user is in the deny-set (always legacy)',
  allow: 'the user is in the allow-set (always migrated)',
  anonymous: 'no user key: anonymous requests follow rollout.anonymous',
  bucket: 'by bucket',
  route: 'the route sends everyone there',
  write_dial: 'writes are held on legacy by the write dial',
  read_your_writes: 'the user has just written'
}

export function checkUser (user: string): void {
  if (Buffer.byteLength(user) > MAX_KEY_BYTES) throw new InvalidValueError(`a user key is at most ${MAX_KEY_BYTES} bytes (this one has ${Buffer.byteLength(user)}); longer keys are anonymous`)
}

/** `dbshift which <user>`: the version, the bucket and why, computed by the proxy's own Router on Redis's state. */
export async function which (ctx: CliContext, user: string): Promise<void> {
  const { config } = ctx
  const state = nextSnapshot(initialSnapshot(config.rollout.initialPercent), await ctx.store.read())
  const { key, decision, bucket } = explain(routerFor(config.rollout), state, user)
  const threshold = thresholdOf(state.percent)
  const why = decision.why === 'bucket'
    ? `bucket ${bucket ?? '?'} ${decision.version === 'migrated' ? '<' : '>='} ${threshold} (= ${state.percent}% × 100)`
    : WHY[decision.why] ?? decision.why
  const { routes } = explainRoutes(routerFor(config.rollout), state, user, new RouteTable(config.routes))
  const side = (version: string, why: string, limit: number): string => why === 'bucket' ? `${version} (bucket ${bucket ?? '?'} ${version === 'migrated' ? '<' : '>='} ${limit})` : `${version} (${why})`
  const byRoute = routes.map((r) => `  ${r.route.padEnd(12)} reads ${side(r.reads.version, r.reads.why, r.readThreshold)}, writes ${side(r.writes.version, r.writes.why, r.writeThreshold)}`)
  // Reads and writes differ only with a write dial below percent, or with routes: then say both, route by route.
  const both = state.writePercent !== undefined || config.routes.length > 0
  ctx.print(`${key === undefined ? '(anonymous)' : fromByteString(key)} → ${decision.version}: ${why}${bucket === null || decision.why === 'bucket' ? '' : ` (bucket ${bucket})`}${both ? `\n${byRoute.join('\n')}` : ''}`, {
    user,
    version: decision.version,
    why: decision.why,
    bucket,
    threshold,
    percent: state.percent,
    state: state.state,
    strategy: config.rollout.strategy,
    salt: config.rollout.salt,
    ...(both ? { writePercent: state.writePercent ?? null, routes: routes.map((r) => ({ route: r.route, reads: r.reads, writes: r.writes, readThreshold: r.readThreshold, writeThreshold: r.writeThreshold })) } : {})
  })
}
