import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'

/** A free TCP port on loopback. */
export async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

/** The command line that runs `command` on the given CPUs (taskset), or as is when cpus is undefined. */
export function pinned (cpus: string | undefined, command: string, args: string[]): [string, string[]] {
  return cpus === undefined ? [command, args] : ['taskset', ['-c', cpus, command, ...args]]
}

export interface Started {
  name: string
  child: ChildProcess
  /** Output so far (stdout and stderr), for error messages. */
  output: () => string
  stop: () => Promise<void>
}

/** Starts a long-running process (pinned when cpus is given) and keeps its output for error messages. */
export function startProcess (name: string, cpus: string | undefined, command: string, args: string[], options: SpawnOptions = {}): Started {
  const [cmd, argv] = pinned(cpus, command, args)
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], ...options })
  let out = ''
  const keep = (chunk: Buffer): void => { out = (out + chunk.toString()).slice(-8_000) }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  return {
    name,
    child,
    output: () => out,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
      await exited
      clearTimeout(timer)
    }
  }
}

/** Waits until `url` answers (any status) or the deadline passes. */
export async function waitForHttp (url: string, started: Started, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (started.child.exitCode !== null) throw new Error(`${started.name} exited early: ${started.output()}`)
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) })
      await res.arrayBuffer()
      return
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`${started.name} did not answer at ${url} within ${timeoutMs} ms: ${started.output()}`)
}

/** Resident set size of a process and its descendants, in bytes (Linux /proc). */
export function rssOf (pid: number): number {
  let total = 0
  for (const p of [pid, ...descendants(pid)]) {
    try {
      const status = readFileSync(`/proc/${p}/status`, 'utf8')
      const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1]
      total += Number(kb ?? 0) * 1024
    } catch {}
  }
  return total
}

function descendants (pid: number): number[] {
  let children: number[] = []
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter((s) => s !== '').map(Number)
  } catch {}
  return children.flatMap((child) => [child, ...descendants(child)])
}

/** CPU time (user + system) a process and its descendants have used so far, in seconds (Linux /proc). */
export function cpuSecondsOf (pid: number): number {
  let ticks = 0
  for (const p of [pid, ...descendants(pid)]) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      ticks += Number(fields[11]) + Number(fields[12]) // utime, stime
    } catch {}
  }
  return ticks / 100 // USER_HZ is 100 on Linux
}
