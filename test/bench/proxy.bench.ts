// dbshift against its peers on the same machine, in one run: straight to the upstream (the limit), nginx with
// split_clients, bare @fastify/http-proxy (the baseline) and dbshift with Redis, routing at 20%, metrics and
// guards on. Rounds are interleaved (A B C D, A B C D, …) so that drift of the machine hits every target alike.
import { mkdtempSync, rmSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { startSplitClientsNginx, startUpstreamNginx } from './lib/nginx.ts'
import { cpuSecondsOf, freePort, rssOf, startProcess, waitForHttp, type Started } from './lib/processes.ts'
import { buildDbshift, migratedShare, startBenchRedis, startDbshift } from './lib/services.ts'
import { median, spread } from './lib/stats.ts'
import { runWrk, type WrkResult } from './lib/wrk.ts'

export interface ProxyBenchOptions {
  rounds: number
  /** Length of each full-load run. */
  seconds: number
  /** Length of each paced run (about 5k req/s). */
  pacedSeconds: number
  connections: number
  /** Targets to leave out (by name), e.g. to shorten a run. */
  skip?: string[]
  log?: (line: string) => void
}

export interface TargetResult {
  name: string
  rounds: WrkResult[]
  paced: WrkResult[]
  rssBytes: number[]
  cpuUsPerRequest: number[]
  requestsPerSecond: number
  p50Ms: number
  p99Ms: number
  pacedRate: number
  pacedP50Ms: number
  pacedP99Ms: number
  rss: number
  /** RSS after start, before any load. */
  idleRss: number
  cpuUs: number
  noise: number
  errors: number
  /** Share of requests tagged migrated (routed targets). */
  migrated?: number
}

export interface ProxyBenchResult {
  options: ProxyBenchOptions
  pinning: string
  targets: TargetResult[]
}

interface Target {
  name: string
  url: string
  process?: Started
  migrated?: number
}

/** CPUs: the proxy alone on one core, wrk, the upstream and Redis on the other (when there are two). */
function layout (): { proxy: string | undefined, load: string | undefined, note: string } {
  const n = availableParallelism()
  if (n < 2) return { proxy: undefined, load: undefined, note: 'not pinned (one CPU)' }
  return { proxy: '0', load: String(n - 1), note: `proxy pinned to CPU 0; wrk, the upstream and Redis to CPU ${n - 1} (taskset)` }
}

/** Rollout of the routed run: its own keys, so its write and route dials leave the plain run's rollout alone. */
const ROUTED = 'routed'

/**
 * 20 routes of the shapes an edge has (pass-through prefixes, a held group, method-limited and class-overridden
 * routes, file globs, a route pinned to migrated), with the benchmark's path, /api/orders, matched by the 17th:
 * each request is normalised, meets the routes of its first segment and is decided by a route dial.
 */
const ROUTES = [
  ['static', '/static/**', 'mode: legacy'], ['assets', '/assets/**', 'mode: legacy'], ['webhooks', '/webhooks/**', 'mode: legacy'],
  ['callbacks', '/callbacks/**', 'mode: legacy'], ['healthz', '/healthz', 'mode: legacy'], ['ping', '/ping', 'mode: legacy'],
  ['admin', '/admin/**', 'mode: legacy'], ['internal', '/internal/**', 'mode: legacy'], ['docs', '/docs/**', 'mode: legacy'],
  ['images', '/files/*.{png,jpg,webp}', 'mode: legacy'], ['api-admin', '/api/admin/**', 'mode: legacy'],
  ['reports', '/api/reports/**', 'mode: split'], ['exports', '/api/exports/**', 'mode: split'],
  ['search', '/api/search', 'mode: split, methods: [POST], class: read'], ['graphql', '/graphql', 'mode: split, methods: [POST]'],
  ['beta', '/api/beta/**', 'mode: migrated'], ['orders', '/api/orders/**', 'mode: split'], ['users', '/api/users/**', 'mode: split'],
  ['carts', '/api/carts/**', 'mode: split'], ['payments', '/api/payments/**', 'mode: split']
].map(([name, path, rest]) => `  - { name: ${String(name)}, path: "${String(path)}", ${String(rest)} }`)

/** Paced runs: 24 connections, each waiting 4 ms between a response and its next request ≈ 5k req/s. */
const PACED = { connections: 24, delayMs: 4 }

export async function runProxyBench (options: ProxyBenchOptions): Promise<ProxyBenchResult> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  const cpus = layout()
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-bench-'))
  const cleanups: Array<() => Promise<void>> = []
  const skip = new Set(options.skip ?? [])
  // Ctrl-C or SIGTERM: stop every process the run started before leaving.
  const interrupted = (): void => { Promise.all(cleanups.map(async (c) => await c().catch(() => {}))).finally(() => process.exit(130)) }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)
  buildDbshift()
  try {
    const upstreamPorts = { legacy: await freePort(), migrated: await freePort() }
    const upstream = startUpstreamNginx(join(dir, 'upstream'), cpus.load, upstreamPorts)
    cleanups.push(upstream.stop)
    const legacy = `http://127.0.0.1:${upstreamPorts.legacy}`
    const migrated = `http://127.0.0.1:${upstreamPorts.migrated}`
    await waitForHttp(legacy, upstream)

    const redis = await startBenchRedis(cpus.load)
    cleanups.push(async () => { redis.client.disconnect(); await redis.server.stop() })
    await redis.client.set('dbshift:{default}:percent', '20')

    const targets: Target[] = [{ name: 'straight to the upstream (the limit)', url: legacy }]
    if (!skip.has('nginx')) {
      try {
        const port = await freePort()
        const nginx = startSplitClientsNginx(join(dir, 'split'), cpus.proxy, port, upstreamPorts)
        cleanups.push(nginx.stop)
        await waitForHttp(`http://127.0.0.1:${port}/`, nginx)
        targets.push({ name: 'nginx split_clients', url: `http://127.0.0.1:${port}`, process: nginx })
      } catch (err) {
        log(`nginx split_clients left out: ${(err as Error).message}`)
      }
    }
    {
      const port = await freePort()
      const baseline = startProcess('@fastify/http-proxy', cpus.proxy, process.execPath, ['test/bench/targets/fastify-http-proxy.js'], {
        env: { ...process.env, PORT: String(port), UPSTREAM: legacy }
      })
      cleanups.push(baseline.stop)
      await waitForHttp(`http://127.0.0.1:${port}/`, baseline)
      targets.push({ name: 'bare @fastify/http-proxy (baseline)', url: `http://127.0.0.1:${port}`, process: baseline })
    }
    {
      const dbshift = await startDbshift(dir, cpus.proxy, { redisUrl: redis.url, legacy, migrated })
      cleanups.push(dbshift.stop)
      targets.push({ name: 'dbshift (Redis, 20%, metrics, guards)', url: dbshift.url, process: dbshift })
    }
    {
      // Reads at 20% with writes held at 5% and two route dials: the reads-before-writes setting of a ramp.
      await redis.client.mset(`dbshift:{${ROUTED}}:percent`, '20', `dbshift:{${ROUTED}}:write_percent`, '5',
        `dbshift:{${ROUTED}}:route:orders:percent`, '20', `dbshift:{${ROUTED}}:route:reports:percent`, '2')
      const routed = await startDbshift(dir, cpus.proxy, { redisUrl: redis.url, legacy, migrated, extra: [`rollout: { name: ${ROUTED} }`, 'routes:', ...ROUTES].join('\n') })
      cleanups.push(routed.stop)
      targets.push({ name: 'dbshift routed (20 routes, writes 5%)', url: routed.url, process: routed })
    }
    for (const target of targets.slice(1)) {
      target.migrated = await migratedShare(target.url)
      log(`${target.name}: ${(target.migrated * 100).toFixed(1)}% of 2,000 distinct users tagged migrated`)
    }

    const idleRss = new Map(targets.map((t) => [t, t.process?.child.pid === undefined ? Number.NaN : rssOf(t.process.child.pid)]))
    log(`warming up (${targets.length} targets) …`)
    for (const target of targets) await runWrk(target.url, { seconds: 3, connections: options.connections, cpus: cpus.load, userOffset: 10_000_000 })

    const results = new Map<Target, { rounds: WrkResult[], paced: WrkResult[], rss: number[], cpu: number[] }>()
    for (const target of targets) results.set(target, { rounds: [], paced: [], rss: [], cpu: [] })
    let users = 0
    for (let round = 1; round <= options.rounds; round++) {
      for (const target of targets) {
        const r = results.get(target) as NonNullable<ReturnType<typeof results.get>>
        const pid = target.process?.child.pid
        const cpuBefore = pid === undefined ? 0 : cpuSecondsOf(pid)
        let peakRss = 0
        const sampler = setInterval(() => { if (pid !== undefined) peakRss = Math.max(peakRss, rssOf(pid)) }, 500)
        const full = await runWrk(target.url, { seconds: options.seconds, connections: options.connections, cpus: cpus.load, userOffset: users })
        clearInterval(sampler)
        users += full.requests + 1
        r.rounds.push(full)
        r.rss.push(peakRss)
        if (pid !== undefined) r.cpu.push((cpuSecondsOf(pid) - cpuBefore) * 1e6 / Math.max(full.requests, 1))
        log(`round ${round} ${target.name}: ${Math.round(full.requestsPerSecond)} req/s, p99 ${full.p99Ms.toFixed(2)} ms`)
      }
      for (const target of targets) {
        const r = results.get(target) as NonNullable<ReturnType<typeof results.get>>
        const paced = await runWrk(target.url, { seconds: options.pacedSeconds, ...PACED, cpus: cpus.load, userOffset: users })
        users += paced.requests + 1
        r.paced.push(paced)
        log(`round ${round} ${target.name} paced: ${Math.round(paced.requestsPerSecond)} req/s, p99 ${paced.p99Ms.toFixed(2)} ms`)
      }
    }

    return {
      options,
      pinning: cpus.note,
      targets: targets.map((target) => {
        const r = results.get(target) as NonNullable<ReturnType<typeof results.get>>
        const rps = r.rounds.map((x) => x.requestsPerSecond)
        return {
          name: target.name,
          rounds: r.rounds,
          paced: r.paced,
          rssBytes: r.rss,
          cpuUsPerRequest: r.cpu,
          requestsPerSecond: median(rps),
          p50Ms: median(r.rounds.map((x) => x.p50Ms)),
          p99Ms: median(r.rounds.map((x) => x.p99Ms)),
          pacedRate: median(r.paced.map((x) => x.requestsPerSecond)),
          pacedP50Ms: median(r.paced.map((x) => x.p50Ms)),
          pacedP99Ms: median(r.paced.map((x) => x.p99Ms)),
          rss: target.process === undefined ? Number.NaN : median(r.rss),
          idleRss: idleRss.get(target) ?? Number.NaN,
          cpuUs: target.process === undefined ? Number.NaN : median(r.cpu),
          noise: spread(rps),
          errors: [...r.rounds, ...r.paced].reduce((sum, x) => sum + x.non2xx + x.socketErrors, 0),
          ...(target.migrated === undefined ? {} : { migrated: target.migrated })
        }
      })
    }
  } finally {
    process.off('SIGINT', interrupted)
    process.off('SIGTERM', interrupted)
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}
