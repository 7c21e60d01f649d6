// The routing decision with a route table: normalise the path, find the route among 50, classify the request,
// check the read-your-writes marker and decide with the write dial and route dials set, for keys the router has
// never seen. Half the requests match no route (every route is tried), the rest are spread over the table.
import { PerformanceObserver } from 'node:perf_hooks'
import { Router, type RoutingState } from '../../src/routing/decide.ts'
import { normalisePath } from '../../src/routing/path.ts'
import { ReadYourWrites } from '../../src/routing/read-your-writes.ts'
import { classOf, RouteTable, type RouteConfig } from '../../src/routing/routes.ts'
import { UserKeyReader } from '../../src/routing/user-key.ts'
import { median } from './lib/stats.ts'

export interface RoutesBenchResult {
  routes: number
  /** Median ns per decision (read key + normalise + match + class + marker + decide) over the batches. */
  nsPerDecision: number
  /** The same with a query string on every target (the path is then a new, sliced string). */
  nsPerDecisionWithQuery: number
  /** Heap bytes allocated per decision over a measured run (0 when no garbage was made). */
  bytesPerDecision: number
  bytesPerDecisionWithQuery: number
  /** Young-generation collections during all the timed batches: none means the loop allocated nothing. */
  scavenges: number
  batches: number
  perBatch: number
}

const KEYS = 100_000
export const ROUTE_COUNT = 50

/** 50 routes of the shapes teams write: pass-through prefixes, held groups, method-limited and class-overridden ones. */
export function benchRoutes (count = ROUTE_COUNT): RouteConfig[] {
  const shapes = [
    (i: number): RouteConfig => ({ name: `static-${i}`, path: `/assets-${i}/**`, mode: 'legacy' }),
    (i: number): RouteConfig => ({ name: `group-${i}`, path: `/api/group-${i}/**`, mode: 'split' }),
    (i: number): RouteConfig => ({ name: `search-${i}`, path: `/api/search-${i}`, methods: ['POST'], mode: 'split', class: 'read' }),
    (i: number): RouteConfig => ({ name: `files-${i}`, path: `/files-${i}/*.{js,css}`, mode: 'legacy' }),
    (i: number): RouteConfig => ({ name: `hooks-${i}`, path: `/webhooks/provider-${i}/**`, mode: 'legacy' })
  ]
  return Array.from({ length: count }, (_, i) => (shapes[i % shapes.length] as (i: number) => RouteConfig)(i))
}

export async function runRoutesBench (batches = 15, perBatch = 1_000_000): Promise<RoutesBenchResult> {
  const configs = benchRoutes()
  const table = new RouteTable(configs)
  const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
  const reader = new UserKeyReader('x-user-id')
  const ryw = new ReadYourWrites({ windowMs: 2_000, secret: 'a-bench-secret-of-at-least-32-chars', rollout: 'default' })
  const routePercent = new Map(configs.filter((c) => c.mode === 'split').map((c, i) => [c.name, i % 3 === 0 ? 2 : 80]))
  const state: RoutingState = { rolledBack: false, percent: 50, writePercent: 5, routePercent, allow: new Set(['tester-1', 'tester-2']), deny: new Set(['vip-1']) }
  const targetsOf = (query: string): string[] => Array.from({ length: 1000 }, (_, i) => {
    if (i % 2 === 0) return `/shop/orders/${i}${query}` // no route: every route is tried
    const c = configs[(i >> 1) % configs.length] as RouteConfig
    return c.path.replace('/**', `/item/${i}`).replace('*.{js,css}', `app-${i}.js`) + query
  })
  const methods = ['GET', 'GET', 'GET', 'POST', 'GET', 'PUT', 'GET', 'GET']
  const headers = Array.from({ length: KEYS }, (_, i) => ({ host: 'shop.example', 'x-user-id': `user-${1_000_000 + i * 7919}`, accept: '*/*' }))
  const now = Date.now()

  let sink = 0
  const loop = (targets: string[], n: number): number => {
    const start = process.hrtime.bigint()
    // A local small integer: a captured `let` holding a large sum would box a number at every step.
    let local = 0
    for (let i = 0; i < n; i++) {
      const method = methods[i & 7] as string
      const path = normalisePath(targets[i % 1000] as string)
      if (typeof path !== 'string') continue
      const route = table.match(method, path)
      const cls = classOf(method, route)
      const key = reader.read(headers[i % KEYS] as (typeof headers)[number])
      const recent = cls === 'read' && key !== undefined && ryw.recent(key, undefined, now)
      const decision = router.decide(state, key, cls, route, recent)
      local = (local + decision.bucket + route.index) | 0
    }
    sink ^= local
    return Number(process.hrtime.bigint() - start) / n
  }
  // Heap growth over short runs that fit in the young generation; a run during which a collection shrank the
  // heap says nothing, so the median is taken over the runs that did not shrink it.
  const bytesOf = (targets: string[]): number => {
    const n = 50_000
    const samples: number[] = []
    for (let run = 0; run < 9; run++) {
      const before = process.memoryUsage().heapUsed
      loop(targets, n)
      const grown = process.memoryUsage().heapUsed - before
      if (grown >= 0) samples.push(grown / n)
    }
    return samples.length === 0 ? Number.NaN : median(samples)
  }

  const plain = targetsOf('')
  const withQuery = targetsOf('?page=2&sort=desc')
  loop(plain, perBatch) // warm up: let the JIT optimise the path
  loop(withQuery, perBatch)
  let scavenges = 0
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) if ((entry as unknown as { detail?: { kind?: number } }).detail?.kind === 1) scavenges++
  })
  observer.observe({ entryTypes: ['gc'] })
  const plainTimes: number[] = []
  for (let b = 0; b < batches; b++) plainTimes.push(loop(plain, perBatch))
  await new Promise((resolve) => setTimeout(resolve, 200)) // gc entries are delivered later, on a timer
  observer.disconnect()
  const queryTimes: number[] = []
  for (let b = 0; b < batches; b++) queryTimes.push(loop(withQuery, perBatch))

  const bytesPerDecision = bytesOf(plain)
  const bytesPerDecisionWithQuery = bytesOf(withQuery)
  if (sink === 0.5) process.stdout.write('') // keeps `sink` alive
  return {
    routes: configs.length,
    nsPerDecision: median(plainTimes),
    nsPerDecisionWithQuery: median(queryTimes),
    bytesPerDecision,
    bytesPerDecisionWithQuery,
    scavenges,
    batches,
    perBatch
  }
}

export function describeRoutesBench (r: RoutesBenchResult): string {
  return `routing decision with ${r.routes} routes, the write dial and route dials (normalise + match + class + marker + decide, unseen keys): ` +
    `**${r.nsPerDecision.toFixed(0)} ns**, ~${r.bytesPerDecision.toFixed(0)} heap bytes per decision, ${r.scavenges} young-generation collections in ${r.batches} × ${r.perBatch.toLocaleString('en-US')}; ` +
    `with a query string on the target ${r.nsPerDecisionWithQuery.toFixed(0)} ns, ~${r.bytesPerDecisionWithQuery.toFixed(0)} heap bytes (the path is sliced off the query)`
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await runRoutesBench(Number(process.env.BENCH_BATCHES ?? 15), Number(process.env.BENCH_PER_BATCH ?? 1_000_000))
  process.stdout.write(`${describeRoutesBench(r)}\n`)
}
