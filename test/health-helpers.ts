import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import type { Logger } from 'pino'
import { buildApp, type App } from '../src/app.ts'
import { loadConfig, resolveConfig, type Config } from '../src/config.ts'
import type { MemberChange } from '../src/health/member.ts'
import type { Version } from '../src/routing/decide.ts'

/** A test config whose pools are given whole (list or object form): loopback ports 0, fast Redis polling. */
export function poolConfig (redisUrl: string, pools: Record<Version, unknown>, file: Record<string, unknown> = {}): Config {
  return resolveConfig({
    ...file,
    listen: '127.0.0.1:0',
    adminListen: '127.0.0.1:0',
    pools,
    redis: { url: redisUrl, pollIntervalMs: 100, fullSyncIntervalMs: 500, commandTimeoutMs: 500, ...(file.redis as object | undefined) }
  })
}

/** The next change of a member's state that satisfies `predicate` (rejects after `timeoutMs`). */
export async function nextMemberChange (app: App, predicate: (version: Version, change: MemberChange) => boolean, timeoutMs = 10_000): Promise<MemberChange> {
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { app.poolHealth.off('change', listener); reject(new Error(`no matching member change within ${timeoutMs} ms`)) }, timeoutMs)
    const listener = (version: Version, change: MemberChange): void => {
      if (!predicate(version, change)) return
      clearTimeout(timer)
      app.poolHealth.off('change', listener)
      resolve(change)
    }
    app.poolHealth.on('change', listener)
  })
}

/** Sends GETs of `path` as `user` one after another until `stop()`; every answer's status and server are kept. */
export function steadyTraffic (url: string, user: string, t: Pick<TestContext, 'after'>, path = '/'): { answers: Array<{ status: number, servedBy: unknown }>, stop: () => Promise<void>, until: (count: number) => Promise<void> } {
  const answers: Array<{ status: number, servedBy: unknown }> = []
  const waiting: Array<{ count: number, resolve: () => void }> = []
  const push = (answer: { status: number, servedBy: unknown }): void => {
    answers.push(answer)
    for (const wait of waiting.filter((w) => answers.length >= w.count)) { waiting.splice(waiting.indexOf(wait), 1); wait.resolve() }
  }
  const state = { running: true }
  const loop = (async () => {
    while (state.running) {
      try {
        const res = await fetch(url + path, { headers: { 'x-user-id': user } })
        const text = await res.text()
        let servedBy: unknown
        try { servedBy = (JSON.parse(text) as { servedBy?: unknown }).servedBy } catch { servedBy = text }
        push({ status: res.status, servedBy })
      } catch (err) {
        push({ status: 0, servedBy: (err as Error).message })
      }
    }
  })()
  const stop = async (): Promise<void> => { state.running = false; await loop }
  /** Resolves once `count` more answers have come back. */
  const until = async (count: number): Promise<void> => { await new Promise<void>((resolve) => waiting.push({ count: answers.length + count, resolve })) }
  t.after(stop)
  return { answers, stop, until }
}

/** The value of one series in the admin port's /metrics, or undefined. */
export async function metricValue (adminUrl: string, series: string): Promise<number | undefined> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

/** A dbshift whose reloads read `path` (YAML; JSON is YAML too), as SIGHUP would read DBSHIFT_CONFIG. */
export async function startReloadable (t: Pick<TestContext, 'after'>, path: string, log: Logger): Promise<{ app: App, url: string, adminUrl: string, write: (file: Record<string, unknown>) => void }> {
  const load = (): Config => loadConfig({ DBSHIFT_CONFIG: path })
  const app = await buildApp(load(), { log, loadConfig: load })
  const { proxy, admin } = await app.listen()
  t.after(async () => await app.close())
  const scheme = app.config.tls === undefined ? 'http' : 'https'
  return { app, url: `${scheme}://127.0.0.1:${proxy.port}`, adminUrl: `http://127.0.0.1:${admin.port}`, write: (file) => { writeFileSync(path, JSON.stringify(file)) } }
}

/** A config file in a temp directory of its own, removed on teardown. */
export function configFile (t: Pick<TestContext, 'after'>, file: Record<string, unknown>): { dir: string, path: string } {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-reload-'))
  t.after(() => { rmSync(dir, { recursive: true, force: true }) })
  const path = join(dir, 'dbshift.yaml')
  writeFileSync(path, JSON.stringify(file))
  return { dir, path }
}
