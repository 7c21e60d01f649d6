import assert from 'node:assert/strict'
import { once } from 'node:events'
import { connect } from 'node:net'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { WebSocket } from 'ws'
import { spawn } from 'node:child_process'
import { freePort, startProxy, startProxyProcess, startRedis, testConfig } from './helpers.ts'
import { connectAs, refusedHandshake, startWsUpstream } from './websocket-helpers.ts'

test('app.close sends 1001 to every open WebSocket as the drain begins, refuses new handshakes, and finishes once they closed', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { initialPercent: 50 } }))
  const clients = await Promise.all(['a', 'b', 'c', 'd'].map(async (user) => await connectAs(t, proxy.url, user)))
  // A client that never answers the close frame nor closes its side: the drain waits for it, but only so long.
  const stubborn = connect({ port: Number(new URL(proxy.url).port), host: '127.0.0.1', allowHalfOpen: true })
  stubborn.write('GET /live HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
  t.after(() => { stubborn.destroy() })
  let received = Buffer.alloc(0)
  stubborn.on('data', (chunk: Buffer) => { received = Buffer.concat([received, chunk]) })
  const ended = once(stubborn, 'end')
  await once(proxy.app.connections, 'added')

  const closing = proxy.app.close()
  const codes = await Promise.all(clients.map(async (client) => (await client.closed).code))
  assert.deepEqual(codes, [1001, 1001, 1001, 1001], 'going away')
  const refused = await refusedHandshake(proxy.url, 'e')
  assert.equal(refused.status, 503, 'while the drain waits, a new handshake is told to go elsewhere')
  assert.equal(JSON.parse(refused.body).error, 'DBSHIFT_ERR_SHUTTING_DOWN')
  await ended
  assert.match(received.toString('latin1'), /^HTTP\/1\.1 101 /)
  assert.deepEqual([...received.subarray(-4)], [0x88, 0x02, 0x03, 0xe9], 'a close frame with 1001, then the end of the connection')
  await closing // the stubborn socket is destroyed after the close wait; the drain does not hang on it
  assert.equal(proxy.app.connections.count(), 0)
})

test('SIGTERM with open WebSockets: each gets 1001 and the process exits 0 without waiting out the grace period', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  const dir = await mkdtemp(join(tmpdir(), 'dbshift-ws-drain-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'dbshift.yaml')
  await writeFile(file, 'server:\n  shutdownGraceMs: 60000\nlog:\n  level: info\n')
  const proxy = await startProxyProcess(t, { DBSHIFT_CONFIG: file, REDIS_URL: redis.url, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url })
  const clients = await Promise.all(['a', 'b', 'c'].map(async (user) => await connectAs(t, proxy.url, user)))

  const exited = proxy.stop('SIGTERM')
  const codes = await Promise.all(clients.map(async (client) => (await client.closed).code))
  assert.deepEqual(codes, [1001, 1001, 1001])
  assert.equal(await exited, 0)
  assert.equal(legacy.closeCodes.filter((code) => code === 1001).length, 3, 'the upstream heard going away too')
  const socket = new WebSocket(proxy.url.replace('http', 'ws'))
  const error = await new Promise<Error>((resolve) => socket.once('error', resolve))
  assert.match(error.message, /ECONNREFUSED/)
})

test('with workers: open WebSockets are counted across the workers, and SIGTERM to the primary sends each one 1001', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startWsUpstream(t, 'legacy')
  const migrated = await startWsUpstream(t, 'migrated')
  const dir = await mkdtemp(join(tmpdir(), 'dbshift-ws-workers-'))
  t.after(async () => await rm(dir, { recursive: true, force: true }))
  const [port, adminPort] = [await freePort(), await freePort()]
  const file = join(dir, 'dbshift.yaml')
  await writeFile(file, [
    `listen: 127.0.0.1:${port}`,
    `adminListen: 127.0.0.1:${adminPort}`,
    'workers: 2',
    `pools: { legacy: ['${legacy.url}'], migrated: ['${migrated.url}'] }`,
    `redis: { url: '${redis.url}' }`
  ].join('\n'))
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, DBSHIFT_CONFIG: file }, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`dbshift exited with ${String(code)}: ${out}`)))
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (/"role":"primary".*"msg":"dbshift is listening"/.test(out)) resolve()
    })
  })
  const url = `http://127.0.0.1:${port}`
  const clients = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map(async (user) => await connectAs(t, url, user)))
  const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text()
  assert.match(metrics, /dbshift_open_connections\{version="legacy",kind="websocket"\} 6/, 'the primary adds up the workers\' gauges')

  child.kill('SIGTERM')
  const codes = await Promise.all(clients.map(async (client) => (await client.closed).code))
  assert.deepEqual(codes, clients.map(() => 1001))
  assert.deepEqual((await exited)[0], 0)
})

test('a WebSocket whose handshake was under way when the drain began gets 1001 as soon as it opens', async (t) => {
  const redis = await startRedis(t)
  const held: Array<() => void> = []
  let reached = (): void => {}
  const handshakeHeld = new Promise<void>((resolve) => { reached = resolve })
  const legacy = await startWsUpstream(t, 'legacy', {
    verifyClient: (_info, done) => {
      held.push(() => { done(true) })
      reached()
    }
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, legacy.url))
  const socket = new WebSocket(proxy.url.replace('http', 'ws') + '/live')
  t.after(() => { socket.terminate() })
  const upgraded = once(socket, 'upgrade')
  const closed = once(socket, 'close')
  await handshakeHeld
  const closing = proxy.app.close()
  held[0]?.()
  await upgraded
  assert.equal((await closed)[0], 1001)
  await closing
})
