// The routing decision alone: read the user key from the headers and decide, for keys the router has never
// seen (no cache can help), at 20% with small allow and deny sets, as on the request path.
import { Router, type RoutingState } from '../../src/routing/decide.ts'
import { UserKeyReader } from '../../src/routing/user-key.ts'
import { median } from './lib/stats.ts'

export interface RoutingBenchResult {
  /** Median ns per decision (read key + decide) over the batches. */
  nsPerDecision: number
  /** Median ns per decision for the hash alone (bucketOf). */
  nsPerHash: number
  /** Heap bytes allocated per decision, measured with the GC kept out of the loop as far as it can be. */
  bytesPerDecision: number
  batches: number
  perBatch: number
}

const KEYS = 100_000

export function runRoutingBench (batches = 15, perBatch = 1_000_000): RoutingBenchResult {
  const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
  const reader = new UserKeyReader('x-user-id')
  const state: RoutingState = { rolledBack: false, percent: 20, allow: new Set(['tester-1', 'tester-2']), deny: new Set(['vip-1']) }
  const headers = Array.from({ length: KEYS }, (_, i) => ({ host: 'shop.example', 'x-user-id': `user-${1_000_000 + i * 7919}`, accept: '*/*' }))

  let sink = 0
  const decide = (n: number): number => {
    const start = process.hrtime.bigint()
    // A local small integer: a captured `let` holding a large sum would box a number at every step.
    let local = 0
    for (let i = 0; i < n; i++) {
      const decision = router.decide(state, reader.read(headers[i % KEYS] as (typeof headers)[number]))
      local = (local + decision.bucket) | 0
    }
    sink ^= local
    return Number(process.hrtime.bigint() - start) / n
  }
  const hash = (n: number): number => {
    const start = process.hrtime.bigint()
    let local = 0
    for (let i = 0; i < n; i++) local = (local + router.bucketOf((headers[i % KEYS] as (typeof headers)[number])['x-user-id'])) | 0
    sink ^= local
    return Number(process.hrtime.bigint() - start) / n
  }
  decide(perBatch) // warm up: let the JIT optimise both paths
  hash(perBatch)
  const decisions: number[] = []
  const hashes: number[] = []
  for (let b = 0; b < batches; b++) {
    decisions.push(decide(perBatch))
    hashes.push(hash(perBatch))
  }

  const n = 200_000
  const before = process.memoryUsage().heapUsed
  decide(n)
  const bytesPerDecision = Math.max(0, (process.memoryUsage().heapUsed - before) / n)
  if (sink === 0.5) process.stdout.write('') // keeps `sink` alive
  return { nsPerDecision: median(decisions), nsPerHash: median(hashes), bytesPerDecision, batches, perBatch }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = runRoutingBench()
  process.stdout.write(`routing decision: ${r.nsPerDecision.toFixed(0)} ns (hash alone ${r.nsPerHash.toFixed(0)} ns), ~${r.bytesPerDecision.toFixed(0)} heap bytes per decision\n`)
}
