import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { get } from 'node:http'
import { test, type TestContext } from 'node:test'
import { freePort, startRedis, startUpstream } from './helpers.ts'
import { configFile } from './health-helpers.ts'

/** GET on a new connection each time, so that the cluster hands it to the next worker in turn. */
async function servedBy (url: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    get(url, { agent: false, headers: { 'x-user-id': 'lee' } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.once('end', () => resolve((JSON.parse(body) as { servedBy: string }).servedBy))
    }).once('error', reject)
  })
}

/** dbshift with `workers` (src/main.ts as a process) reading `path`; its JSON log lines, and a wait for one. */
async function startWorkers (t: TestContext, path: string): Promise<{ child: ChildProcess, lines: Array<Record<string, unknown>>, until: (predicate: () => boolean) => Promise<void> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, DBSHIFT_CONFIG: path }, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGKILL')
    await exited
  })
  const lines: Array<Record<string, unknown>> = []
  const waiters: Array<{ predicate: () => boolean, resolve: () => void }> = []
  let buffered = ''
  child.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString()
    const parts = buffered.split('\n')
    buffered = parts.pop() ?? ''
    for (const part of parts) try { lines.push(JSON.parse(part) as Record<string, unknown>) } catch {}
    for (const waiter of waiters.filter((w) => w.predicate())) { waiters.splice(waiters.indexOf(waiter), 1); waiter.resolve() }
  })
  const until = async (predicate: () => boolean): Promise<void> => {
    if (predicate()) return
    await new Promise<void>((resolve) => waiters.push({ predicate, resolve }))
  }
  await until(() => lines.some((line) => line.msg === 'dbshift is listening' && line.role === 'primary'))
  return { child, lines, until }
}

test('with workers, SIGHUP to the primary reloads every worker', async (t) => {
  const redis = await startRedis(t)
  const first = await startUpstream(t, 'first')
  const second = await startUpstream(t, 'second')
  const migrated = await startUpstream(t, 'migrated')
  const port = await freePort()
  const adminPort = await freePort()
  const settings = (legacy: string): Record<string, unknown> => ({
    listen: `127.0.0.1:${port}`, adminListen: `127.0.0.1:${adminPort}`, workers: 2, pools: { legacy: [legacy], migrated: [migrated.url] }, redis: { url: redis.url }
  })
  const file = configFile(t, settings(first.url))
  const { child, lines, until } = await startWorkers(t, file.path)
  const url = `http://127.0.0.1:${port}/`
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'first')

  writeFileSync(file.path, JSON.stringify(settings(second.url)))
  child.kill('SIGHUP')
  await until(() => new Set(lines.filter((line) => String(line.msg).startsWith('configuration reloaded')).map((line) => line.pid)).size === 2)
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'second', 'every worker took the new pool')
  assert.equal(child.exitCode, null, 'the primary keeps running')
})

test('with workers, POST /reload on the primary reloads every worker and answers with each one\'s result', async (t) => {
  const redis = await startRedis(t)
  const first = await startUpstream(t, 'first')
  const second = await startUpstream(t, 'second')
  const migrated = await startUpstream(t, 'migrated')
  const port = await freePort()
  const adminPort = await freePort()
  const token = 'a-token-of-sixteen-characters'
  const settings = (legacy: unknown): Record<string, unknown> => ({
    listen: `127.0.0.1:${port}`, adminListen: `127.0.0.1:${adminPort}`, workers: 2, admin: { token }, pools: { legacy: [legacy], migrated: [migrated.url] }, redis: { url: redis.url }
  })
  const file = configFile(t, settings(first.url))
  await startWorkers(t, file.path)
  const url = `http://127.0.0.1:${port}/`
  const reload = async (): Promise<{ status: number, body: { reloaded?: boolean, changed?: string[], error?: string, message?: string, workers: Array<{ worker: number, status: number, reloaded?: boolean, error?: string }> } }> => {
    const res = await fetch(`http://127.0.0.1:${adminPort}/reload`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
    return { status: res.status, body: await res.json() as never }
  }
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'first')

  writeFileSync(file.path, JSON.stringify(settings(second.url)))
  const applied = await reload()
  assert.equal(applied.status, 200)
  assert.equal(applied.body.reloaded, true)
  assert.deepEqual(applied.body.changed, ['pools.legacy.members'])
  assert.equal(new Set(applied.body.workers.map((w) => w.worker)).size, 2, 'each worker answered')
  assert.deepEqual(applied.body.workers.map((w) => [w.status, w.reloaded]), [[200, true], [200, true]])
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'second', 'every worker took the new pool')

  writeFileSync(file.path, JSON.stringify(settings('ftp://nowhere')))
  const refused = await reload()
  assert.equal(refused.status, 400)
  assert.equal(refused.body.error, 'DBSHIFT_ERR_CONFIG')
  assert.match(refused.body.message ?? '', /pools\.legacy\.0 = "ftp:\/\/nowhere"/)
  assert.deepEqual(refused.body.workers.map((w) => [w.status, w.error]), [[400, 'DBSHIFT_ERR_CONFIG'], [400, 'DBSHIFT_ERR_CONFIG']])
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'second', 'every worker kept the running configuration')
})
