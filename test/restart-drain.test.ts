import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { Agent, request } from 'undici'
import { freePort, startRedis, startUpstream, type TestRedis, type TestUpstream } from './helpers.ts'

const MAIN = new URL('../src/main.ts', import.meta.url).pathname

interface Instance { port: number, child: ChildProcess, exited: Promise<number | null>, out: () => string }

/** Runs `dbshift` (src/main.ts) as its own process on `port`, configured by a file and the environment. */
async function startInstance (t: TestContext, env: Record<string, string>, port: number): Promise<Instance> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN], {
    env: { ...process.env, ...env, DBSHIFT_LISTEN: `127.0.0.1:${port}`, DBSHIFT_ADMIN_LISTEN: `127.0.0.1:${await freePort()}` },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  let out = ''
  child.stderr?.on('data', (chunk: Buffer) => { out += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (out.includes('dbshift is listening')) resolve()
    })
    child.once('exit', (code) => reject(new Error(`dbshift exited with ${String(code)} before listening: ${out}`)))
  })
  return { port, child, exited, out: () => out }
}

async function setup (t: TestContext): Promise<{ env: Record<string, string>, redis: TestRedis, legacy: TestUpstream, uploads: Map<string, number> }> {
  const redis = await startRedis(t)
  const uploads = new Map<string, number>()
  const handler: Parameters<typeof startUpstream>[2] = (req, res) => {
    let bytes = 0
    req.on('data', (chunk: Buffer) => { bytes += chunk.length })
    req.once('end', () => {
      if (req.method === 'POST') uploads.set(req.url ?? '', bytes)
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ bytes }))
    })
  }
  const legacy = await startUpstream(t, 'legacy', handler)
  const migrated = await startUpstream(t, 'migrated', handler)
  await redis.client.set('dbshift:{default}:percent', '50')
  const dir = await mkdtemp(join(tmpdir(), 'dbshift-restart-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'dbshift.yaml')
  await writeFile(file, 'server:\n  shutdownGraceMs: 15000\nlog:\n  level: info\n')
  return { env: { DBSHIFT_CONFIG: file, REDIS_URL: redis.url, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url }, redis, legacy, uploads }
}

/** A slow upload: `chunks` pieces of 64 KiB, one every `gapMs`. */
function slowBody (chunks: number, gapMs: number): Readable {
  let sent = 0
  return new Readable({
    read () {
      if (sent === chunks) return this.push(null)
      setTimeout(() => { sent++; this.push(Buffer.alloc(65_536, 0x61)) }, gapMs)
    }
  })
}

test('SIGTERM drains in-flight requests, including a long upload, then exits 0', async (t) => {
  const { env, uploads } = await setup(t)
  const port = await freePort()
  const instance = await startInstance(t, env, port)

  // A 2 MiB upload that takes about 1.5 s, and a download that is still being produced.
  const upload = request(`http://127.0.0.1:${port}/upload/1`, { method: 'POST', body: slowBody(32, 50), headers: { 'x-user-id': 'uploader' } })
  await new Promise((resolve) => setTimeout(resolve, 300))
  instance.child.kill('SIGTERM')

  const res = await upload
  assert.equal(res.statusCode, 200)
  assert.deepEqual(await res.body.json(), { bytes: 32 * 65_536 })
  assert.equal(uploads.get('/upload/1'), 32 * 65_536, 'the upstream received the whole body')
  const code = await instance.exited
  assert.equal(code, 0)

  // After the drain nothing listens any more.
  await assert.rejects(request(`http://127.0.0.1:${port}/`), /ECONNREFUSED/)
})

test('a rolling restart of two instances under traffic fails no request', async (t) => {
  const { env, uploads } = await setup(t)
  const ports = [await freePort(), await freePort()]
  const instances = [await startInstance(t, env, ports[0] as number), await startInstance(t, env, ports[1] as number)]

  // The client acts like a load balancer: it spreads requests over both instances and, when an instance
  // refuses the connection or closes an idle one under a new request (nothing was processed), sends it to
  // the other one. Any answer other than 200, or any other error, is a failed request.
  const agent = new Agent({ connections: 8, keepAliveTimeout: 10_000 })
  t.after(async () => await agent.close())
  const tally = { sent: 0, ok: 0, failed: [] as string[], rerouted: new Map<string, number>(), uploads: 0 }
  const state = { stopped: false }
  const send = async (n: number, method: 'GET' | 'POST'): Promise<void> => {
    tally.sent++
    for (let attempt = 0; attempt < 4; attempt++) {
      const port = ports[(n + attempt) % 2] as number
      try {
        const res = await request(`http://127.0.0.1:${port}/r/${n}`, {
          dispatcher: agent,
          method,
          body: method === 'POST' ? slowBody(8, 40) : undefined,
          headers: { 'x-user-id': `user-${n % 300}` }
        })
        await res.body.dump()
        if (res.statusCode === 200) tally.ok++
        else tally.failed.push(`${method} /r/${n} → ${res.statusCode} from :${port}`)
        return
      } catch (err) {
        const code = (err as { code?: string }).code ?? ''
        const unprocessed = code === 'ECONNREFUSED' || (method === 'GET' && (code === 'UND_ERR_SOCKET' || code === 'ECONNRESET'))
        if (!unprocessed) {
          tally.failed.push(`${method} /r/${n}: ${code} ${(err as Error).message}`)
          return
        }
        tally.rerouted.set(code, (tally.rerouted.get(code) ?? 0) + 1)
      }
    }
    tally.failed.push(`${method} /r/${n}: no instance took it`)
  }
  let next = 0
  const loops = Array.from({ length: 4 }, async () => { while (!state.stopped) await send(next++, 'GET') })
  const uploaders = Array.from({ length: 2 }, async () => {
    while (!state.stopped) {
      tally.uploads++
      await send(next++, 'POST')
    }
  })

  for (const i of [0, 1]) {
    await new Promise((resolve) => setTimeout(resolve, 500))
    const old = instances[i] as Instance
    old.child.kill('SIGTERM')
    assert.equal(await old.exited, 0, `instance ${i} drained and exited cleanly`)
    instances[i] = await startInstance(t, env, ports[i] as number)
  }
  await new Promise((resolve) => setTimeout(resolve, 500))
  state.stopped = true
  await Promise.all([...loops, ...uploaders])

  process.stdout.write(`# fault "rolling restart of two instances": sent ${tally.sent}, answered 200 ${tally.ok}, failed ${tally.failed.length}, sent to the other instance ${JSON.stringify(Object.fromEntries(tally.rerouted))}, uploads ${tally.uploads}\n`)
  assert.deepEqual(tally.failed, [])
  assert.equal(tally.ok, tally.sent)
  assert.equal([...uploads.values()].filter((bytes) => bytes !== 8 * 65_536).length, 0, 'every upload arrived whole')
})
