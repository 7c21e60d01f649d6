import type { Config } from '../config.ts'
import { Router, type Decision, type Explanation, type RoutingState } from './decide.ts'
import { DEFAULT_ROUTE, type RouteTable } from './routes.ts'
import { toByteString, UserKeyReader } from './user-key.ts'

/** The router of a configuration, the same for the proxy and the `dbshift` command: the salt defaults to the rollout name. */
export function routerFor (rollout: Config['rollout']): Router {
  return new Router({ strategy: rollout.strategy, salt: rollout.salt ?? rollout.name, anonymous: rollout.anonymous })
}

const HEADER = 'x-user-id'
const reader = new UserKeyReader(HEADER)

/**
 * What the router answers for a user key typed by a person (`which`): the key is read as the proxy reads a
 * header, so one the proxy would treat as anonymous (empty, control characters, …) is anonymous here too.
 */
export function explain (router: Router, state: RoutingState, text: string): { key: string | undefined, decision: Decision, bucket: number | null } {
  const key = reader.read({ [HEADER]: toByteString(text) })
  const decision = router.decide(state, key)
  return { key, decision, bucket: key === undefined ? null : router.bucketOf(key) }
}

/** Reads and writes, and why, of a user key typed by a person, on the default route and on every configured route. */
export function explainRoutes (router: Router, state: RoutingState, text: string, table: RouteTable): { key: string | undefined, routes: Explanation[] } {
  const key = reader.read({ [HEADER]: toByteString(text) })
  return { key, routes: [DEFAULT_ROUTE, ...table.routes].map((route) => router.explain(state, key, route)) }
}
