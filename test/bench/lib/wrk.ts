import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { pinned } from './processes.ts'

const SCRIPT = fileURLToPath(new URL('users.lua', import.meta.url))

export interface WrkResult {
  requestsPerSecond: number
  requests: number
  socketErrors: number
  non2xx: number
  p50Ms: number
  p90Ms: number
  p99Ms: number
  maxMs: number
}

export interface WrkOptions {
  seconds: number
  connections: number
  /** Pause of each connection between a response and its next request (paced runs), in whole ms. */
  delayMs?: number
  /** CPU list for wrk (taskset), or undefined for no pinning. */
  cpus?: string
  /** First user number, so that consecutive runs keep sending user IDs never seen before. */
  userOffset?: number
}

/** One wrk run (1 thread) against `url`, every request with a new X-User-ID. */
export async function runWrk (url: string, options: WrkOptions): Promise<WrkResult> {
  const args = ['-t1', `-c${options.connections}`, `-d${options.seconds}s`, '--latency', '-s', SCRIPT, url]
  const [command, argv] = pinned(options.cpus, 'wrk', args)
  const child = spawn(command, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, WRK_DELAY_MS: String(options.delayMs ?? 0), WRK_USER_OFFSET: String(options.userOffset ?? 0) }
  })
  let out = ''
  child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', resolve)
  })
  const line = out.split('\n').find((l) => l.startsWith('WRK_JSON '))
  if (code !== 0 || line === undefined) throw new Error(`wrk failed (exit ${String(code)}): ${out}`)
  const raw = JSON.parse(line.slice('WRK_JSON '.length)) as Record<string, number>
  const ms = (us: number | undefined): number => (us ?? 0) / 1000
  return {
    requestsPerSecond: (raw.requests ?? 0) / ((raw.durationUs ?? 1) / 1e6),
    requests: raw.requests ?? 0,
    socketErrors: raw.socketErrors ?? 0,
    non2xx: raw.non2xx ?? 0,
    p50Ms: ms(raw.p50Us),
    p90Ms: ms(raw.p90Us),
    p99Ms: ms(raw.p99Us),
    maxMs: ms(raw.maxUs)
  }
}
