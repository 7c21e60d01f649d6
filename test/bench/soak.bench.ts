// `node --import tsx test/bench/soak.bench.ts`: dbshift under full load for SOAK_SECONDS (600), a new X-User-ID on
// every request (millions of distinct users), RSS and heap sampled every SOAK_SAMPLE_SECONDS (30): memory must stay
// flat, since nothing on the request path keeps per-user state.
import { writeFileSync } from 'node:fs'
import { rssOf } from './lib/processes.ts'
import { startDbshift, withBenchStack } from './lib/services.ts'
import { fmt, table } from './lib/stats.ts'
import { runWrk } from './lib/wrk.ts'

const total = Number(process.env.SOAK_SECONDS ?? 600)
const step = Number(process.env.SOAK_SAMPLE_SECONDS ?? 30)

async function heapUsed (adminUrl: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  return Number(/^nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1] ?? Number.NaN)
}

async function main (): Promise<void> {
  const started = new Date()
  await withBenchStack('soak', async ({ dir, pinned: pin, proxyCpu, loadCpu, redis, pools }) => {
    const dbshift = await startDbshift(dir, proxyCpu, { redisUrl: redis.url, ...pools })
    const pid = dbshift.child.pid as number
    const rows: string[][] = []
    let users = 0
    for (let elapsed = step; elapsed <= total; elapsed += step) {
      const result = await runWrk(dbshift.url, { seconds: step, connections: 64, cpus: loadCpu, userOffset: users })
      users += result.requests + 1
      rows.push([`${elapsed} s`, fmt.int(users), fmt.int(result.requestsPerSecond), fmt.mib(rssOf(pid)), fmt.mib(await heapUsed(dbshift.adminUrl)), String(result.non2xx + result.socketErrors)])
      process.stderr.write(`${rows.at(-1)?.join('  ') ?? ''}\n`)
    }
    await dbshift.stop()
    const report = [
      `# dbshift soak, ${started.toISOString()}`,
      '',
      `${total} s of wrk (1 thread, 64 connections) against dbshift (node dist/main.js, own Redis, 20%, defaults)${pin ? ' pinned to one core' : ''}, a new X-User-ID on every request; RSS of the process and nodejs_heap_size_used_bytes every ${step} s.`,
      '',
      table(['elapsed', 'distinct users so far', 'req/s', 'RSS', 'heap used', 'errors'], rows)
    ].join('\n')
    process.stdout.write(`\n${report}\n`)
    const file = `test/bench/results/soak-${started.toISOString().replace(/[:]/g, '').replace(/\..*/, '')}.md`
    writeFileSync(file, report)
    process.stdout.write(`written to ${file}\n`)
  })
}

await main()
