import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync, writeFileSync } from 'node:fs'
import { request } from 'node:https'
import type { TLSSocket } from 'node:tls'
import { join } from 'node:path'
import { test } from 'node:test'
import { captureLogs, startRedis, startUpstream } from './helpers.ts'
import { configFile, startReloadable } from './health-helpers.ts'

/** A self-signed certificate for 127.0.0.1, made at test time with openssl, in `dir`. */
function certificate (dir: string, name: string): { cert: string, key: string } {
  const cert = join(dir, `${name}.crt`)
  const key = join(dir, `${name}.key`)
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', `/CN=${name}`,
    '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' })
  return { cert, key }
}

/** GET over HTTPS on a new connection, trusting `ca` only; the answer and the certificate the server showed. */
async function httpsGet (url: string, ca: string): Promise<{ status: number, body: string, subject: string }> {
  return await new Promise((resolve, reject) => {
    const req = request(url, { ca: readFileSync(ca), agent: false, headers: { 'x-user-id': 'lee' } }, (res) => {
      const subject = (res.socket as TLSSocket).getPeerCertificate().subject.CN as string
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, subject }))
    })
    req.on('error', reject)
    req.end()
  })
}

test('tls serves the proxy port over HTTPS, and a reload swaps the certificate for new connections', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const settings = (tls: { cert: string, key: string }): Record<string, unknown> => ({
    listen: '127.0.0.1:0', adminListen: '127.0.0.1:0', tls, pools: { legacy: [legacy.url], migrated: [migrated.url] }, redis: { url: redis.url }
  })
  const file = configFile(t, {})
  const first = certificate(file.dir, 'first')
  const second = certificate(file.dir, 'second')
  const { log } = captureLogs()
  writeFileSync(file.path, JSON.stringify(settings(first)))
  const proxy = await startReloadable(t, file.path, log)
  assert.match(proxy.url, /^https:/)

  const before = await httpsGet(proxy.url, first.cert)
  assert.equal(before.status, 200)
  assert.equal(JSON.parse(before.body).servedBy, 'legacy')
  assert.equal(before.subject, 'first')
  await assert.rejects(httpsGet(proxy.url, second.cert), /self[- ]signed|unable to verify|certificate/i, 'only the first certificate is served')

  proxy.write(settings(second))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['tls.cert', 'tls.key'] })
  const after = await httpsGet(proxy.url, second.cert)
  assert.equal(after.status, 200)
  assert.equal(after.subject, 'second')

  proxy.write(settings({ cert: join(file.dir, 'missing.crt'), key: second.key }))
  const bad = await proxy.app.reload()
  assert.match(bad.ok ? '' : bad.error, /tls\.cert = ".*missing\.crt": the file cannot be read/)
  assert.equal((await httpsGet(proxy.url, second.cert)).subject, 'second', 'a certificate that cannot be read keeps the one in force')
})

test('a certificate file that cannot be read stops the start with exit 2 and one line naming the key', async (t) => {
  const file = configFile(t, { tls: { cert: '/nonexistent/tls.crt', key: '/nonexistent/tls.key' } })
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { PATH: process.env.PATH, DBSHIFT_CONFIG: file.path, DBSHIFT_LEGACY: 'http://127.0.0.1:1', DBSHIFT_MIGRATED: 'http://127.0.0.1:2', DBSHIFT_LISTEN: '127.0.0.1:0', DBSHIFT_ADMIN_LISTEN: '127.0.0.1:0' },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const [code] = await once(child, 'close') as [number | null]
  assert.equal(code, 2)
  assert.match(stderr, /^dbshift: invalid configuration: tls\.cert = "\/nonexistent\/tls\.crt": the file cannot be read/)
  assert.equal(stderr.trim().split('\n').length, 1)
})
