import type { TestContext } from 'node:test'
import type { App } from '../src/app.ts'
import { resolveConfig, type Config } from '../src/config.ts'
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

/** Sends GETs as `user` one after another until `stop()`; every answer's status and server are kept. */
export function steadyTraffic (url: string, user: string, t: Pick<TestContext, 'after'>): { answers: Array<{ status: number, servedBy: unknown }>, stop: () => Promise<void>, until: (count: number) => Promise<void> } {
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
        const res = await fetch(`${url}/`, { headers: { 'x-user-id': user } })
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
