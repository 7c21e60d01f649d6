// `node --import tsx test/bench/workers.bench.ts`: how dbshift scales with `workers` on this host. Every process
// (dbshift, wrk, the upstream, Redis) may use every CPU, as on a host where dbshift is given all of them; rounds
// alternate between the settings. Also checks that the primary's /metrics adds up to what wrk sent.
// WORKERS (1,2), WORKERS_ROUNDS (3), WORKERS_SECONDS (10).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { describeMachine } from './lib/machine.ts'
import { startUpstreamNginx } from './lib/nginx.ts'
import { cpuSecondsOf, freePort, rssOf, waitForHttp } from './lib/processes.ts'
import { buildDbshift, startBenchRedis, startDbshift, type DbshiftProcess } from './lib/services.ts'
import { fmt, median, table } from './lib/stats.ts'
import { runWrk } from './lib/wrk.ts'

const settings = (process.env.WORKERS ?? `1,${availableParallelism()}`).split(',').map(Number)
const rounds = Number(process.env.WORKERS_ROUNDS ?? 3)
const seconds = Number(process.env.WORKERS_SECONDS ?? 10)

async function requestsCounted (adminUrl: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  let total = 0
  for (const match of text.matchAll(/^dbshift_requests_total\{[^}]*\} (\d+)/gm)) total += Number(match[1])
  return total
}

async function main (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-workers-'))
  buildDbshift()
  const ports = { legacy: await freePort(), migrated: await freePort() }
  const upstream = startUpstreamNginx(join(dir, 'upstream'), undefined, ports)
  const redis = await startBenchRedis(undefined)
  const running: DbshiftProcess[] = []
  try {
    await waitForHttp(`http://127.0.0.1:${ports.legacy}/`, upstream)
    await redis.client.set('dbshift:{default}:percent', '20')
    const targets = []
    for (const workers of settings) {
      const dbshift = await startDbshift(dir, undefined, { redisUrl: redis.url, legacy: `http://127.0.0.1:${ports.legacy}`, migrated: `http://127.0.0.1:${ports.migrated}`, workers })
      running.push(dbshift)
      await runWrk(dbshift.url, { seconds: 3, connections: 64, userOffset: 1e8 + workers * 1e7 })
      targets.push({ workers, dbshift, rps: [] as number[], rss: [] as number[], cpu: [] as number[], counted: true })
    }
    let users = 0
    for (let round = 1; round <= rounds; round++) {
      for (const target of targets) {
        const pid = target.dbshift.child.pid as number
        const before = await requestsCounted(target.dbshift.adminUrl)
        const cpuBefore = cpuSecondsOf(pid)
        let peak = 0
        const sampler = setInterval(() => { peak = Math.max(peak, rssOf(pid)) }, 500)
        const result = await runWrk(target.dbshift.url, { seconds, connections: 64, userOffset: users })
        clearInterval(sampler)
        users += result.requests + 1
        const counted = await requestsCounted(target.dbshift.adminUrl) - before
        // wrk does not count the requests still in flight when it stops (at most one per connection).
        if (counted < result.requests || counted > result.requests + 64) {
          target.counted = false
          process.stderr.write(`workers ${target.workers}: /metrics counted ${counted}, wrk ${result.requests}\n`)
        }
        target.rps.push(result.requestsPerSecond)
        target.rss.push(peak)
        target.cpu.push((cpuSecondsOf(pid) - cpuBefore) * 1e6 / result.requests)
        process.stderr.write(`round ${round}, workers ${target.workers}: ${Math.round(result.requestsPerSecond)} req/s\n`)
      }
    }
    const base = median(targets[0]?.rps ?? [])
    const report = [
      `# dbshift workers scaling, ${new Date().toISOString()}`,
      '',
      `Median of ${rounds} alternating rounds of ${seconds} s, wrk 1 thread 64 connections, new X-User-ID per request, nothing pinned (dbshift, wrk, the nginx upstream and Redis share the ${availableParallelism()} CPUs).`,
      '',
      table(['workers', 'req/s', 'vs 1 worker', 'RSS (all processes)', 'CPU per request', '/metrics = requests sent (± in flight)'], targets.map((t) => [
        String(t.workers), fmt.int(median(t.rps)), fmt.ratio(median(t.rps) / base), fmt.mib(median(t.rss)), `${median(t.cpu).toFixed(1)} µs`, t.counted ? 'yes' : 'no'
      ])),
      '',
      table(['', ''], Object.entries(describeMachine()).map(([k, v]) => [k, v]))
    ].join('\n')
    process.stdout.write(`\n${report}\n`)
    const file = `test/bench/results/workers-${new Date().toISOString().replace(/[:]/g, '').replace(/\..*/, '')}.md`
    writeFileSync(file, report)
    process.stdout.write(`written to ${file}\n`)
  } finally {
    for (const p of running) await p.stop()
    redis.client.disconnect()
    await redis.server.stop()
    await upstream.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
