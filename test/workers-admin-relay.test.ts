import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { freePort, peakRss, startRedis, startUpstream, tempDir } from './helpers.ts'

const TOKEN = 'workers-relay-token-0123456789'
const MiB = 1024 * 1024

/** dbshift from its entry file with `workers: 2`; resolves once the primary says it listens. */
async function startWorkers (t: TestContext, redisUrl: string, legacy: string, migrated: string): Promise<{ adminPort: number, pid: number }> {
  const dir = tempDir(t, 'dbshift-relay-')
  const [port, adminPort] = [await freePort(), await freePort()]
  const file = join(dir, 'dbshift.yaml')
  writeFileSync(file, [
    `listen: 127.0.0.1:${port}`,
    `adminListen: 127.0.0.1:${adminPort}`,
    'workers: 2',
    `pools: { legacy: ['${legacy}'], migrated: ['${migrated}'] }`,
    `redis: { url: '${redisUrl}', pollIntervalMs: 100 }`,
    `admin: { token: '${TOKEN}' }`
  ].join('\n'))
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { PATH: process.env.PATH, DBSHIFT_CONFIG: file }, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await exited
    }
  })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`dbshift exited with ${String(code)}: ${out}`))
    child.once('exit', onExit)
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (/"role":"primary".*"msg":"dbshift is listening"/.test(out)) {
        child.off('exit', onExit)
        resolve()
      }
    })
  })
  child.stdout.resume()
  return { adminPort, pid: child.pid as number }
}

/**
 * Sends `bytes` of body to the admin port as fast as the server takes them, from `localAddress`; resolves with the
 * answer's status and body as soon as there is one (the rest of the body may never be sent).
 */
async function send (port: number, method: string, path: string, headers: Record<string, string>, bytes: number, localAddress = '127.0.0.1'): Promise<{ status: number, body: string }> {
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, localAddress, headers: { 'content-type': 'application/json', ...(headers['transfer-encoding'] === undefined ? { 'content-length': String(bytes) } : {}), ...headers } }, (res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => { body += chunk.toString() })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }); req.destroy() })
    })
    req.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err) })
    const chunk = Buffer.alloc(MiB, 0x20)
    let sent = 0
    const pump = (): void => {
      while (sent < bytes && !req.destroyed) {
        const size = Math.min(chunk.length, bytes - sent)
        sent += size
        if (!req.write(size === chunk.length ? chunk : chunk.subarray(0, size))) { req.once('drain', pump); return }
      }
      if (sent >= bytes && !req.destroyed) req.end()
    }
    pump()
  })
}

test('workers: 2, the primary relays admin bodies with the token check first and the body limit: a 200 MiB body does not grow it', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { adminPort, pid } = await startWorkers(t, redis.url, legacy.url, migrated.url)
  const before = peakRss(pid)

  const anonymous = await send(adminPort, 'PUT', '/rollout', {}, 200 * MiB)
  assert.equal(anonymous.status, 401)
  assert.equal((JSON.parse(anonymous.body) as { error: string }).error, 'DBSHIFT_ERR_UNAUTHORIZED')
  const wrongToken = await send(adminPort, 'POST', '/rollback', { authorization: 'Bearer not-the-token-at-all' }, 200 * MiB)
  assert.equal(wrongToken.status, 401)
  const tooLarge = await send(adminPort, 'PUT', '/rollout', { authorization: `Bearer ${TOKEN}` }, 200 * MiB)
  assert.equal(tooLarge.status, 413)
  const chunked = await send(adminPort, 'PUT', '/rollout', { authorization: `Bearer ${TOKEN}`, 'transfer-encoding': 'chunked' }, 200 * MiB)
  assert.equal(chunked.status, 413, 'a body without Content-Length is cut off at the limit too')

  const grown = peakRss(pid) - before
  process.stdout.write(`# workers primary: peak RSS grew by ${(grown / MiB).toFixed(1)} MiB over four 200 MiB admin bodies\n`)
  assert.ok(grown < 64 * MiB, `the primary's peak RSS grew by ${(grown / MiB).toFixed(1)} MiB`)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null, 'nothing was changed')
})

test('workers: 2, a change relayed by the primary is audited with the caller\'s address, not the primary\'s', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { adminPort } = await startWorkers(t, redis.url, legacy.url, migrated.url)

  // From another loopback address than the primary's own, so that the two can be told apart.
  const body = JSON.stringify({ percent: 5, reason: 'first step' })
  const set = await new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: adminPort, method: 'PUT', path: '/rollout', localAddress: '127.0.0.2', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'x-forwarded-for': '203.0.113.9' } }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', reject)
    req.end(body)
  })
  assert.equal(set, 200)
  const [[, fields = []] = []] = await redis.client.xrevrange('dbshift:{default}:audit', '+', '-', 'COUNT', 1)
  const entry = Object.fromEntries(fields.flatMap((_, i) => i % 2 === 0 ? [[fields[i], fields[i + 1]]] : []))
  assert.equal(entry.action, 'set_percent')
  assert.equal(entry.by, 'admin@127.0.0.2', 'the caller\'s own address (a client-sent X-Forwarded-For is not believed)')
})
