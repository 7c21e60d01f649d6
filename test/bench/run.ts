// `npm run bench`: the proxy comparison and the routing micro-benchmark; prints the table and writes it, with the
// machine, the versions and the method, to test/bench/results/.
// Environment: BENCH_ROUNDS (5), BENCH_SECONDS (10), BENCH_PACED_SECONDS (5), BENCH_CONNECTIONS (64),
// BENCH_SKIP (comma-separated: nginx).
import { mkdirSync, writeFileSync } from 'node:fs'
import { loadavg } from 'node:os'
import { describeMachine } from './lib/machine.ts'
import { fmt, table } from './lib/stats.ts'
import { runProxyBench, type ProxyBenchResult } from './proxy.bench.ts'
import { describeRoutesBench, runRoutesBench, type RoutesBenchResult } from './routing-routes.bench.ts'
import { runRoutingBench, type RoutingBenchResult } from './routing.bench.ts'

const env = (name: string, fallback: number): number => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && value > 0 ? value : fallback
}

const machine = describeMachine()
const options = {
  rounds: env('BENCH_ROUNDS', 5),
  seconds: env('BENCH_SECONDS', 10),
  pacedSeconds: env('BENCH_PACED_SECONDS', 5),
  connections: env('BENCH_CONNECTIONS', 64),
  skip: (process.env.BENCH_SKIP ?? '').split(',').filter((s) => s !== '')
}
const startedAt = new Date()
const proxy = await runProxyBench(options)
const routing = runRoutingBench()
const routes = await runRoutesBench()
machine['load average at end'] = loadavg().map((n) => n.toFixed(2)).join(' ')

const report = render(proxy, routing, routes)
process.stdout.write(`\n${report}\n`)
mkdirSync('test/bench/results', { recursive: true })
const stamp = startedAt.toISOString().replace(/[:]/g, '').replace(/\..*/, '')
writeFileSync(`test/bench/results/${stamp}.md`, report)
writeFileSync(`test/bench/results/${stamp}.json`, JSON.stringify({ startedAt, machine, proxy, routing, routes }, null, 2))
process.stdout.write(`\nwritten to test/bench/results/${stamp}.md and .json\n`)

function render (result: ProxyBenchResult, micro: RoutingBenchResult, routes: RoutesBenchResult): string {
  const byName = (prefix: string): ProxyBenchResult['targets'][number] | undefined => result.targets.find((t) => t.name.startsWith(prefix))
  const dbshift = byName('dbshift (')
  const routed = byName('dbshift routed')
  const baseline = byName('bare @fastify/http-proxy')
  const nginx = byName('nginx')
  const rows = result.targets.map((t) => [
    t.name,
    fmt.int(t.requestsPerSecond),
    `${fmt.ms(t.p50Ms)} / ${fmt.ms(t.p99Ms)}`,
    `${fmt.int(t.pacedRate)}: ${fmt.ms(t.pacedP50Ms)} / ${fmt.ms(t.pacedP99Ms)}`,
    `${fmt.mib(t.idleRss)} / ${fmt.mib(t.rss)}`,
    Number.isFinite(t.cpuUs) ? `${t.cpuUs.toFixed(1)} µs` : '—',
    fmt.int(1e6 / t.cpuUs),
    fmt.pct(t.noise),
    String(t.errors)
  ])
  const ratio = (a: number | undefined, b: number | undefined): string => fmt.ratio((a ?? Number.NaN) / (b ?? Number.NaN))
  const lines = [
    `# dbshift benchmark, ${startedAt.toISOString()}`,
    '',
    table(['target', 'req/s (full load)', 'p50 / p99 (full load)', 'p50 / p99 at ~5k req/s', 'RSS idle / full load', 'CPU per request', 'req/s per core (from CPU)', 'spread of req/s', 'errors'], rows),
    '',
    `- dbshift / baseline req/s: **${ratio(dbshift?.requestsPerSecond, baseline?.requestsPerSecond)}**; dbshift / nginx: **${ratio(dbshift?.requestsPerSecond, nginx?.requestsPerSecond)}**`,
    `- from CPU time (robust to other load on the machine): dbshift / baseline **${ratio(baseline?.cpuUs, dbshift?.cpuUs)}**, dbshift / nginx ${ratio(nginx?.cpuUs, dbshift?.cpuUs)} requests per CPU-second`,
    `- routed (20 routes, the write dial at 5%, route dials) / plain dbshift req/s: **${ratio(routed?.requestsPerSecond, dbshift?.requestsPerSecond)}**, from CPU time ${ratio(dbshift?.cpuUs, routed?.cpuUs)}; routed / baseline req/s: **${ratio(routed?.requestsPerSecond, baseline?.requestsPerSecond)}**`,
    `- dbshift / baseline RSS: ${ratio(dbshift?.rss, baseline?.rss)}; dbshift tagged ${fmt.pct(dbshift?.migrated ?? Number.NaN)} of 2,000 distinct users migrated (set: 20%)`,
    `- routing decision (read X-User-ID + decide, unseen keys): **${micro.nsPerDecision.toFixed(0)} ns**; murmur3 bucket alone ${micro.nsPerHash.toFixed(0)} ns; ~${micro.bytesPerDecision.toFixed(0)} heap bytes per decision (median of ${micro.batches} × ${fmt.int(micro.perBatch)})`,
    `- ${describeRoutesBench(routes)}`,
    '',
    '## Method',
    '',
    `- Medians of ${result.options.rounds} interleaved rounds (every target once per round, in turn): full load ${result.options.seconds} s with wrk, 1 thread, ${result.options.connections} connections; then paced ${result.options.pacedSeconds} s, 24 connections each pausing 4 ms between requests (about 5k req/s).`,
    `- Every request carries a new \`X-User-ID\` (\`user-<n>\`, never repeated in a run). ${result.pinning}.`,
    '- Upstream: nginx, one process, answering a fixed 300-byte JSON body on two ports (legacy, migrated). nginx split_clients: one process, 20% on the user ID (murmur2: a different 20% than dbshift\'s), keep-alive to both. Baseline: `@fastify/http-proxy` with its defaults, logger off. dbshift: `node dist/main.js` (built by `npm run build`, as `npm start` runs it) from a YAML file, own Redis, `percent` 20, default metrics, guards and limits, log level warn.',
    '- RSS: the highest sample (every 0.5 s) during a full-load round, median over rounds. CPU per request: user + system time of the proxy process during a full-load round ÷ requests; its inverse, req/s per core, is what one dedicated core would carry, and is far less disturbed than req/s by other work on the machine. Spread: (max − min) ÷ median of req/s over rounds, a measure of machine noise.',
    '',
    '## Machine',
    '',
    table(['', ''], Object.entries(machine).map(([k, v]) => [k, v]))
  ]
  return lines.join('\n')
}
