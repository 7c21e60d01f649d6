// `node --import tsx test/bench/profile.bench.ts`: dbshift under full load with --cpu-prof, then the frames that
// took the most CPU (self time), to see where a request's time goes. PROFILE_SECONDS (10).
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startDbshift, withBenchStack } from './lib/services.ts'
import { table } from './lib/stats.ts'
import { runWrk } from './lib/wrk.ts'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
  children?: number[]
}

/** Self time per function (name and file), as a share of all samples, highest first. */
export function topFrames (profile: { nodes: ProfileNode[] }, count = 20, only?: (url: string) => boolean): Array<{ frame: string, share: number }> {
  const byFrame = new Map<string, number>()
  let total = 0
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0
    total += hits
    if (only !== undefined && !only(node.callFrame.url)) continue
    const { functionName, url, lineNumber } = node.callFrame
    const file = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/dist\//, 'dbshift/').replace(/^node:/, 'node:')
    const frame = `${functionName === '' ? '(anonymous)' : functionName} ${file === '' ? '' : `${file}:${lineNumber + 1}`}`.trim()
    byFrame.set(frame, (byFrame.get(frame) ?? 0) + hits)
  }
  return [...byFrame.entries()].sort((a, b) => b[1] - a[1]).slice(0, count).map(([frame, hits]) => ({ frame, share: hits / Math.max(total, 1) }))
}

/** Share of self time spent in each group of files: dbshift's own, fastify, undici, Node's http/net/streams, idle. */
export function groups (profile: { nodes: ProfileNode[] }): Array<{ group: string, share: number }> {
  const byGroup = new Map<string, number>()
  let total = 0
  for (const node of profile.nodes) {
    const hits = node.hitCount ?? 0
    total += hits
    const { url, functionName } = node.callFrame
    const group = url.includes('/dist/') && !url.includes('node_modules')
      ? 'dbshift (dist/)'
      : /node_modules\/(fastify|find-my-way|light-my-request|avvio)\//.test(url)
        ? 'fastify'
        : url.includes('node_modules/undici/') ? 'undici' : url.includes('node_modules/') ? 'other packages' : url.startsWith('node:') ? 'Node.js (JavaScript)' : functionName.startsWith('(') ? functionName : 'native (writev, string encoding, …)'
    byGroup.set(group, (byGroup.get(group) ?? 0) + hits)
  }
  return [...byGroup.entries()].sort((a, b) => b[1] - a[1]).map(([group, hits]) => ({ group, share: hits / Math.max(total, 1) }))
}

async function main (): Promise<void> {
  const seconds = Number(process.env.PROFILE_SECONDS ?? 10)
  await withBenchStack('profile', async ({ dir, proxyCpu, loadCpu, redis, pools }) => {
    const profiles = join(dir, 'profiles')
    const dbshift = await startDbshift(dir, proxyCpu, { redisUrl: redis.url, ...pools, nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profiles] })
    await runWrk(dbshift.url, { seconds: 3, connections: 64, cpus: loadCpu, userOffset: 1e8 })
    const result = await runWrk(dbshift.url, { seconds, connections: 64, cpus: loadCpu })
    await dbshift.stop() // SIGTERM: a clean exit writes the profile
    const file = readdirSync(profiles).find((f) => f.endsWith('.cpuprofile'))
    if (file === undefined) throw new Error(`no profile written: ${dbshift.output()}`)
    const profile = JSON.parse(readFileSync(join(profiles, file), 'utf8')) as { nodes: ProfileNode[] }
    const frames = topFrames(profile)
    const report = [
      `# dbshift CPU profile under full load, ${new Date().toISOString()}`,
      '',
      `${seconds} s of wrk (1 thread, 64 connections, new X-User-ID per request) against dbshift pinned to one core with \`--cpu-prof\`: ${Math.round(result.requestsPerSecond)} req/s (profiling slows it down). Self time over the whole process life.`,
      '',
      table(['self time', 'where'], groups(profile).map((g) => [`${(g.share * 100).toFixed(1)}%`, g.group])),
      '',
      table(['self time', 'frame'], frames.map((f) => [`${(f.share * 100).toFixed(1)}%`, `\`${f.frame}\``])),
      '',
      'dbshift\'s own frames:',
      '',
      table(['self time', 'frame'], topFrames(profile, 12, (url) => url.includes('/dist/') && !url.includes('node_modules')).map((f) => [`${(f.share * 100).toFixed(1)}%`, `\`${f.frame}\``]))
    ].join('\n')
    process.stdout.write(`${report}\n`)
    const out = `test/bench/results/profile-${new Date().toISOString().replace(/[:]/g, '').replace(/\..*/, '')}.md`
    writeFileSync(out, report)
    process.stdout.write(`written to ${out}\n`)
  })
}

if (import.meta.url === `file://${process.argv[1]}`) await main()
