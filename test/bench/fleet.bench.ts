// `npm run bench:fleet`: N dbshift instances (default 50) against one Redis, in this process, each with its own
// Redis connections, snapshot, guards and ports. Measures how fast a change reaches every instance (through
// dbshift, and by a plain SET), what each instance costs Redis when idle and when busy (INFO commandstats), and
// the fleet-wide L1 decision when traffic is spread thin over every instance.
// Environment: FLEET_INSTANCES (50), FLEET_CHANGES (20), FLEET_IDLE_SECONDS (20), FLEET_BUSY_SECONDS (20).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Redis } from 'ioredis'
import { pino } from 'pino'
import { buildApp, type App } from '../../src/app.ts'
import { resolveConfig } from '../../src/config.ts'
import type { RolloutSnapshot } from '../../src/rollout/snapshot.ts'
import { describeMachine } from './lib/machine.ts'
import { startBalancerNginx, startUpstreamNginx } from './lib/nginx.ts'
import { freePort, waitForHttp, type Started } from './lib/processes.ts'
import { startBenchRedis } from './lib/services.ts'
import { fmt, median, table } from './lib/stats.ts'
import { runWrk } from './lib/wrk.ts'

const env = (name: string, fallback: number): number => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && value > 0 ? value : fallback
}
const N = env('FLEET_INSTANCES', 50)
const CHANGES = env('FLEET_CHANGES', 20)
const IDLE_SECONDS = env('FLEET_IDLE_SECONDS', 20)
const BUSY_SECONDS = env('FLEET_BUSY_SECONDS', 20)
const log = (line: string): void => { process.stderr.write(`${line}\n`) }

function percentile (values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN
}

/** Resolves with each instance's delay (ms from `t0`) until its snapshot satisfies `predicate`. */
async function everywhere (apps: App[], t0: number, predicate: (s: RolloutSnapshot) => boolean, timeoutMs = 10_000): Promise<number[]> {
  return await Promise.all(apps.map(async (app) => await new Promise<number>((resolve, reject) => {
    if (predicate(app.sync.current)) return resolve(performance.now() - t0)
    const timer = setTimeout(() => { app.sync.off('change', onChange); reject(new Error(`${app.instanceId} never saw the change`)) }, timeoutMs)
    const onChange = (next: RolloutSnapshot): void => {
      if (!predicate(next)) return
      clearTimeout(timer)
      app.sync.off('change', onChange)
      resolve(performance.now() - t0)
    }
    app.sync.on('change', onChange)
  })))
}

/**
 * Redis commands per second since the last CONFIG RESETSTAT, by command, without the benchmark's own. Commands run
 * inside a Lua script count too (as `get`, `set`…), beside the script call itself (`evalsha`).
 */
async function commandRates (client: Redis, seconds: number): Promise<Map<string, number>> {
  const info = await client.info('commandstats')
  const rates = new Map<string, number>()
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
    const [, name = '', calls = '0'] = match
    if (name.startsWith('config') || name === 'info') continue
    rates.set(name, Number(calls) / seconds)
  }
  return rates
}

async function main (): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-fleet-'))
  const cleanups: Array<() => Promise<void>> = []
  const startedAt = new Date()
  const machine = describeMachine()
  try {
    const ports = { legacy: await freePort(), migrated: await freePort() }
    const upstream = startUpstreamNginx(join(dir, 'upstream'), undefined, ports)
    cleanups.push(upstream.stop)
    await waitForHttp(`http://127.0.0.1:${ports.legacy}/`, upstream)
    const redis = await startBenchRedis(undefined)
    cleanups.push(async () => { redis.client.disconnect(); await redis.server.stop() })
    await redis.client.set('dbshift:{default}:percent', '0')

    log(`starting ${N} instances …`)
    const quiet = pino({ level: 'error' })
    const apps: App[] = []
    cleanups.push(async () => { await Promise.all(apps.map(async (app) => await app.close())) })
    const urls: string[] = []
    for (let i = 0; i < N; i++) {
      const config = resolveConfig({
        listen: '127.0.0.1:0',
        adminListen: '127.0.0.1:0',
        instanceId: `fleet-${i}`,
        pools: { legacy: [`http://127.0.0.1:${ports.legacy}`], migrated: [`http://127.0.0.1:${ports.migrated}`] },
        redis: { url: redis.url },
        upstream: { connections: 8 }
      })
      const app = await buildApp(config, { log: quiet })
      const { proxy } = await app.listen()
      apps.push(app)
      urls.push(`127.0.0.1:${proxy.port}`)
    }

    // 1. A change made through dbshift (Lua script + PUBLISH): time until every instance routes by it.
    const pushed: number[] = []
    const pushedEach: number[] = []
    for (let k = 1; k <= CHANGES; k++) {
      const percent = k % 2 === 0 ? 10 : 20
      const t0 = performance.now()
      const seen = everywhere(apps, t0, (s) => s.percent === percent)
      await (apps[k % N] as App).control.setPercent(percent, { by: 'bench', source: 'api' })
      const delays = await seen
      pushedEach.push(...delays)
      pushed.push(Math.max(...delays))
    }
    log(`pushed change: p50 ${median(pushed).toFixed(1)} ms, p99 ${percentile(pushed, 99).toFixed(1)} ms to reach all ${N}`)

    // 2. A plain SET: found by each instance's poll (redis.pollIntervalMs, 500 ms by default).
    const plain: number[] = []
    for (let k = 1; k <= Math.min(CHANGES, 10); k++) {
      const percent = k % 2 === 0 ? 30 : 40
      const t0 = performance.now()
      const seen = everywhere(apps, t0, (s) => s.percent === percent)
      await redis.client.set('dbshift:{default}:percent', String(percent))
      plain.push(Math.max(...await seen))
    }
    log(`plain SET: p50 ${median(plain).toFixed(0)} ms, p99 ${percentile(plain, 99).toFixed(0)} ms to reach all ${N}`)

    // 3. Redis commands per second per instance, idle.
    await redis.client.config('RESETSTAT')
    await new Promise((resolve) => setTimeout(resolve, IDLE_SECONDS * 1000))
    const idle = await commandRates(redis.client, IDLE_SECONDS)
    const idleTotal = [...idle.values()].reduce((a, b) => a + b, 0)
    log(`idle: ${(idleTotal / N).toFixed(2)} Redis commands/s per instance`)

    // 4. Busy: wrk through a round-robin balancer over every instance, 20% migrated.
    await redis.client.set('dbshift:{default}:percent', '20')
    await everywhere(apps, performance.now(), (s) => s.percent === 20)
    const lbPort = await freePort()
    const balancer: Started = startBalancerNginx(join(dir, 'balancer'), undefined, lbPort, urls)
    cleanups.push(balancer.stop)
    await waitForHttp(`http://127.0.0.1:${lbPort}/`, balancer)
    await redis.client.config('RESETSTAT')
    const busyRun = await runWrk(`http://127.0.0.1:${lbPort}`, { seconds: BUSY_SECONDS, connections: 32 })
    const busy = await commandRates(redis.client, BUSY_SECONDS)
    const busyTotal = [...busy.values()].reduce((a, b) => a + b, 0)
    log(`busy (${Math.round(busyRun.requestsPerSecond)} req/s over ${N}): ${(busyTotal / N).toFixed(2)} Redis commands/s per instance`)

    // 5. Fleet-wide L1: the migrated pool fails, traffic is spread thin (a few requests per second per instance,
    // far below the per-instance minimum of the fast window), and the fleet's sum must still trip it.
    upstream.child.kill('SIGTERM')
    await new Promise((resolve) => upstream.child.once('exit', resolve))
    const failing = startUpstreamNginx(join(dir, 'failing'), undefined, ports, 500)
    cleanups.push(failing.stop)
    await waitForHttp(`http://127.0.0.1:${ports.legacy}/`, failing)
    const t0 = performance.now()
    const tripped = everywhere(apps, t0, (s) => s.rolledBack, 60_000)
    const thin = runWrk(`http://127.0.0.1:${lbPort}`, { seconds: 40, connections: 2, delayMs: 10, userOffset: 50_000_000 })
    const tripDelays = await tripped
    const trip = (apps[0] as App).sync.current.trip
    const thinRun = await thin
    const perInstanceRate = thinRun.requestsPerSecond / N
    log(`L1: everyone rolled back ${(Math.max(...tripDelays) / 1000).toFixed(1)} s after the migrated pool began failing (${perInstanceRate.toFixed(1)} req/s per instance; trip: ${trip?.level ?? '?'} ${trip?.reason ?? ''})`)

    const lines = [
      `# dbshift fleet benchmark, ${startedAt.toISOString()}`,
      '',
      `${N} instances in one Node.js process (each with its own two Redis connections, snapshot, guards, pools and ports), one redis-server, default intervals (poll 500 ms, full sync 5 s, heartbeat 5 s, L1 evaluation 1 s).`,
      '',
      table(['measure', 'result', 'target'], [
        [`change through dbshift reaches all ${N} (${pushed.length} changes)`, `p50 ${median(pushed).toFixed(1)} ms, p99 ${percentile(pushed, 99).toFixed(1)} ms (per instance: p50 ${median(pushedEach).toFixed(1)} ms)`, '≤ 100 ms p99'],
        [`plain SET reaches all ${N} (${plain.length} changes)`, `p50 ${median(plain).toFixed(0)} ms, p99 ${percentile(plain, 99).toFixed(0)} ms`, '≤ 1 s'],
        ['Redis commands per idle instance', `${(idleTotal / N).toFixed(2)} /s (${[...idle.entries()].sort((a, b) => b[1] - a[1]).map(([c, r]) => `${c} ${(r / N).toFixed(2)}`).join(', ')})`, '≤ 5 /s'],
        [`Redis commands per busy instance (${fmt.int(busyRun.requestsPerSecond)} req/s over the fleet)`, `${(busyTotal / N).toFixed(2)} /s (${[...busy.entries()].sort((a, b) => b[1] - a[1]).map(([c, r]) => `${c} ${(r / N).toFixed(2)}`).join(', ')})`, 'independent of traffic'],
        [`fleet-wide L1, traffic spread thin (${perInstanceRate.toFixed(1)} req/s per instance, 20% migrated, migrated answering 500)`, `everyone on legacy after ${(Math.max(...tripDelays) / 1000).toFixed(1)} s (trip ${trip?.level ?? '?'}: ${trip?.reason ?? ''})`, 'trips on the fleet\'s sum']
      ]),
      '',
      '## Machine',
      '',
      table(['', ''], Object.entries(machine).map(([k, v]) => [k, v]))
    ]
    const report = lines.join('\n')
    process.stdout.write(`\n${report}\n`)
    mkdirSync('test/bench/results', { recursive: true })
    const file = `test/bench/results/fleet-${startedAt.toISOString().replace(/[:]/g, '').replace(/\..*/, '')}.md`
    writeFileSync(file, report)
    process.stdout.write(`\nwritten to ${file}\n`)
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
process.exit(0) // pino and pools may hold the loop open a moment longer; everything is closed above
