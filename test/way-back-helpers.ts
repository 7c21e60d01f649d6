import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import { buildApp, type App } from '../src/app.ts'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { captureLogs, testConfig, type TestProxy } from './helpers.ts'

export const TOKEN = 'way-back-test-token-0123456789'

/** Fast polls, L2 off, L1 quick to judge: what every way-back test starts from. */
export function wayBackConfig (redisUrl: string, legacy: string, migrated: string, rollout: string, extra: Record<string, unknown> = {}): ReturnType<typeof testConfig> {
  const guards = (extra.guards ?? {}) as Record<string, unknown>
  return testConfig(redisUrl, legacy, migrated, {
    ...extra,
    rollout: { name: rollout, ...(extra.rollout as object | undefined) },
    admin: { token: TOKEN },
    guards: {
      signalPollIntervalMs: 100,
      ...guards,
      l1: { fastWindowMs: 2_000, fastMinRequests: 20, fastErrorRate: 0.5, windowMs: 60_000, minRequests: 20, errorRate: 0.05, evaluateIntervalMs: 100, ...(guards.l1 as object | undefined) },
      l2: { enabled: false, ...(guards.l2 as object | undefined) },
      wayBack: { maxLagSeconds: 5, fenceTimeoutMs: 60_000, ...(guards.wayBack as object | undefined) }
    }
  })
}

/** A dbshift on loopback with an optional clock of the test's own; closed on teardown. */
export async function startWayBackProxy (t: Pick<TestContext, 'after'>, config: ReturnType<typeof testConfig>, now?: () => number): Promise<TestProxy> {
  const { log, lines } = captureLogs()
  const app: App = await buildApp(config, { log, now })
  const { proxy, admin } = await app.listen()
  t.after(async () => await app.close())
  return { app, url: `http://127.0.0.1:${proxy.port}`, adminUrl: `http://127.0.0.1:${admin.port}`, logs: lines, close: async () => await app.close() }
}

export function keysOf (rollout: string): RolloutKeys {
  return new RolloutKeys('dbshift', rollout)
}

/** An admin call with the token. */
export async function adminCall (adminUrl: string, method: string, path: string, body?: unknown): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await fetch(adminUrl + path, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  return { status: res.status, body: await res.json() as Record<string, unknown> }
}

/** One metric's value from /metrics (the first series that matches `series`, e.g. `dbshift_way_back{mode="none"}`). */
export async function metric (adminUrl: string, series: string): Promise<number | undefined> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

export interface Run { code: number | null, stdout: string, stderr: string, json: () => Record<string, unknown> }

/** The dbshift command as a real process against the test's Redis and rollout. */
export async function dbshift (redisUrl: string, rollout: string, ...args: string[]): Promise<Run> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-way-back-'))
  const config = join(dir, 'dbshift.yaml')
  writeFileSync(config, `rollout:\n  name: ${rollout}\nguards:\n  wayBack:\n    maxLagSeconds: 5\n`)
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    env: { ...process.env, REDIS_URL: redisUrl, DBSHIFT_CONFIG: config, DBSHIFT_OPERATOR: 'olivia' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  rmSync(dir, { recursive: true, force: true })
  return { code, stdout, stderr, json: () => JSON.parse(stdout) as Record<string, unknown> }
}

/** Users whose bucket is under `percent` (migrated) and over it (legacy), as the proxy's router decides. */
export function cohorts (app: App, percent: number, count: number): { migrated: string[], legacy: string[] } {
  const migrated: string[] = []
  const legacy: string[] = []
  for (let i = 0; migrated.length < count || legacy.length < count; i++) {
    const user = `user-${i}`
    const bucket = app.router.bucketOf(user)
    if (bucket < percent * 100) { if (migrated.length < count) migrated.push(user) } else if (legacy.length < count) legacy.push(user)
  }
  return { migrated, legacy }
}
