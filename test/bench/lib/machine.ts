import { execFileSync, spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os'

function version (command: string, args: string[], pattern: RegExp): string {
  const run = spawnSync(command, args, { encoding: 'utf8' })
  if (run.error !== undefined) return 'not installed'
  const text = `${run.stdout}${run.stderr}`
  return pattern.exec(text)?.[1] ?? text.trim().split('\n')[0] ?? '?'
}

function packageVersion (name: string): string {
  try {
    return (JSON.parse(readFileSync(`node_modules/${name}/package.json`, 'utf8')) as { version: string }).version
  } catch {
    return '?'
  }
}

/** What the numbers were measured on: written beside them. */
export function describeMachine (): Record<string, string> {
  return {
    cpu: `${cpus()[0]?.model ?? '?'} × ${availableParallelism()}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    kernel: `Linux ${release()}`,
    node: process.version,
    'load average at start': loadavg().map((n) => n.toFixed(2)).join(' '),
    nginx: version('nginx', ['-v'], /nginx\/(\S+)/),
    wrk: version('wrk', ['-v'], /wrk (\S+)/),
    'redis-server': version('redis-server', ['--version'], /v=(\S+)/),
    fastify: packageVersion('fastify'),
    undici: packageVersion('undici'),
    '@fastify/http-proxy': packageVersion('@fastify/http-proxy'),
    dbshift: `${(JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version}${gitCommit()}`
  }
}

function gitCommit (): string {
  try {
    return ` (${execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()})`
  } catch {
    return ''
  }
}
