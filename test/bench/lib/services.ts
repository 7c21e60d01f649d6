import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { startUpstreamNginx } from './nginx.ts'
import { freePort, startProcess, waitForHttp, type Started } from './processes.ts'

/** A redis-server of the benchmark's own (no persistence), and a client to it. */
export async function startBenchRedis (cpus: string | undefined, extra: string[] = []): Promise<{ url: string, port: number, client: Redis, server: Started }> {
  const port = await freePort()
  // A dump file of its own that never exists, so that a stray dump.rdb in the working directory is never loaded.
  const dump = ['--dir', tmpdir(), '--dbfilename', `dbshift-bench-${port}-${process.pid}.rdb`]
  const server = startProcess('redis-server', cpus, 'redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...dump, ...extra])
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: 1 })
  client.on('error', () => {})
  const deadline = Date.now() + 10_000
  for (;;) {
    try {
      await client.connect()
      await client.ping()
      break
    } catch (err) {
      if (Date.now() > deadline || server.child.exitCode !== null) throw new Error(`redis-server did not start: ${(err as Error).message} ${server.output()}`)
      client.disconnect()
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  return { url: `redis://127.0.0.1:${port}`, port, client, server }
}

export interface DbshiftProcess extends Started {
  url: string
  adminUrl: string
}

/** Compiles dbshift to dist/ (`npm run build`), so that the benchmark runs what `npm start` runs. */
export function buildDbshift (): void {
  const run = spawnSync('npm', ['run', '--silent', 'build'], { encoding: 'utf8' })
  if (!existsSync('dist/main.js')) throw new Error(`npm run build produced no dist/main.js: ${run.stdout}${run.stderr}`)
  if (run.status !== 0) process.stderr.write(`npm run build reported errors (dist/ was still written):\n${run.stdout}${run.stderr}\n`)
}

/** dbshift from its built entry file (as `npm start` runs it), configured by a YAML file, pinned when cpus is given. */
export async function startDbshift (dir: string, cpus: string | undefined, options: { redisUrl: string, legacy: string, migrated: string, workers?: number, extra?: string, nodeArgs?: string[] }): Promise<DbshiftProcess> {
  const port = await freePort()
  const adminPort = await freePort()
  const file = join(dir, `dbshift-${port}.yaml`)
  writeFileSync(file, [
    `listen: 127.0.0.1:${port}`,
    `adminListen: 127.0.0.1:${adminPort}`,
    `workers: ${options.workers ?? 1}`,
    `pools: { legacy: ['${options.legacy}'], migrated: ['${options.migrated}'] }`,
    `redis: { url: '${options.redisUrl}' }`,
    'log: { level: warn }',
    options.extra ?? ''
  ].join('\n'))
  const started = startProcess('dbshift', cpus, process.execPath, [...options.nodeArgs ?? [], 'dist/main.js'], { env: { ...process.env, DBSHIFT_CONFIG: file } })
  const adminUrl = `http://127.0.0.1:${adminPort}`
  await waitForHttp(`${adminUrl}/readyz`, started)
  await waitForHttp(`http://127.0.0.1:${port}/`, started)
  return { ...started, url: `http://127.0.0.1:${port}`, adminUrl }
}

export interface BenchStack {
  dir: string
  /** Whether the proxy and the load run on separate cores. */
  pinned: boolean
  proxyCpu: string | undefined
  loadCpu: string | undefined
  redis: Awaited<ReturnType<typeof startBenchRedis>>
  /** The pools' base URLs (the nginx upstream's two ports). */
  pools: { legacy: string, migrated: string }
}

/**
 * The setting of a single-dbshift benchmark: dist/ built, the nginx upstream and Redis on the load core, the
 * rollout at 20%. Runs `body`, then stops everything whatever happened.
 */
export async function withBenchStack (name: string, body: (stack: BenchStack) => Promise<void>): Promise<void> {
  const pinned = availableParallelism() >= 2
  const loadCpu = pinned ? String(availableParallelism() - 1) : undefined
  const dir = mkdtempSync(join(tmpdir(), `dbshift-${name}-`))
  buildDbshift()
  const ports = { legacy: await freePort(), migrated: await freePort() }
  const upstream = startUpstreamNginx(join(dir, 'upstream'), loadCpu, ports)
  const redis = await startBenchRedis(loadCpu)
  try {
    await waitForHttp(`http://127.0.0.1:${ports.legacy}/`, upstream)
    await redis.client.set('dbshift:{default}:percent', '20')
    const pools = { legacy: `http://127.0.0.1:${ports.legacy}`, migrated: `http://127.0.0.1:${ports.migrated}` }
    await body({ dir, pinned, proxyCpu: pinned ? '0' : undefined, loadCpu, redis, pools })
  } finally {
    redis.client.disconnect()
    await redis.server.stop()
    await upstream.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Share of `n` requests with distinct users that the target tags as migrated (x-dbshift-version). */
export async function migratedShare (url: string, n = 2_000): Promise<number> {
  let migrated = 0
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${url}/api/orders`, { headers: { 'x-user-id': `check-${i}` } })
    await res.arrayBuffer()
    if (res.status !== 200) throw new Error(`${url} answered ${res.status}`)
    if (res.headers.get('x-dbshift-version') === 'migrated') migrated++
  }
  return migrated / n
}
