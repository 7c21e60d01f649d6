import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { get } from 'node:http'
import { test } from 'node:test'
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
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, DBSHIFT_CONFIG: file.path }, stdio: ['ignore', 'pipe', 'inherit'] })
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
  const url = `http://127.0.0.1:${port}/`
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'first')

  writeFileSync(file.path, JSON.stringify(settings(second.url)))
  child.kill('SIGHUP')
  await until(() => new Set(lines.filter((line) => String(line.msg).startsWith('configuration reloaded')).map((line) => line.pid)).size === 2)
  for (let i = 0; i < 4; i++) assert.equal(await servedBy(url), 'second', 'every worker took the new pool')
  assert.equal(child.exitCode, null, 'the primary keeps running')
})
