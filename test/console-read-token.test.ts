import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { request } from 'node:http'
import { join } from 'node:path'
import { test } from 'node:test'
import { resolveConfig } from '../src/config.ts'
import { freePort, tempDir, startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'
import { openConsole, startBrowser, untilPolled } from './console-browser.ts'

const ADMIN = 'console-admin-token-0123456789'
const READ = 'console-read-token-9876543210'

async function get (url: string, token?: string): Promise<{ status: number, body: string, headers: Headers }> {
  const res = await fetch(url, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } })
  return { status: res.status, body: await res.text(), headers: res.headers }
}

/** A GET with the request target sent exactly as written. */
async function rawStatus (base: string, path: string): Promise<number | undefined> {
  const { hostname, port } = new URL(base)
  return await new Promise((resolve, reject) => {
    request({ host: hostname, port, path, method: 'GET' }, (res) => {
      res.resume()
      resolve(res.statusCode)
    }).on('error', reject).end()
  })
}

test('admin.readToken: every admin read needs the read token or the admin token; the page, its files and the probes stay open', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: 'guarded' }, admin: { token: ADMIN, readToken: READ } }))
  const admin = proxy.adminUrl

  for (const path of ['/status', '/metrics', '/which/alice', '/fleet', '/audit', '/schedule', '/allow', '/console/overview', '/console/history', '/no-such-route']) {
    const refused = await get(admin + path)
    assert.equal(refused.status, 401, path)
    assert.equal(JSON.parse(refused.body).error, 'DBSHIFT_ERR_UNAUTHORIZED', path)
    assert.equal((await get(admin + path, 'wrong-token-wrong-token')).status, 401, path)
    assert.notEqual((await get(admin + path, READ)).status, 401, path)
    assert.notEqual((await get(admin + path, ADMIN)).status, 401, path)
  }
  assert.match((await get(`${admin}/metrics`, READ)).body, /dbshift_rollout_percent/)
  // Raw paths that fetch would tidy up: an open route spelled into another path opens nothing.
  for (const path of ['/console/assets/../status', '/healthz/../status', '//status']) {
    assert.notEqual(await rawStatus(admin, path), 200, path)
  }
  for (const path of ['/', '/console/assets/app.js', '/console/assets/uPlot.min.js', '/healthz', '/readyz']) {
    assert.equal((await get(admin + path)).status, 200, path)
  }
  // The read token reads; it changes nothing.
  const change = await fetch(`${admin}/rollback`, { method: 'POST', headers: { authorization: `Bearer ${READ}` } })
  assert.equal(change.status, 401)
  assert.equal(await redis.client.get('dbshift:{guarded}:state'), null)

  // The page asks for the token, and shows the dials once it has one.
  const browser = await startBrowser(t)
  const { page, errors } = await openConsole(browser, `${admin}/`)
  await page.waitForSelector('#need-token:not([hidden])')
  assert.equal(await page.$('[data-dial="percent"]'), null)
  await page.fill('#token-input', READ)
  await page.click('#token-use')
  await page.waitForSelector('[data-dial="percent"]')
  await page.waitForSelector('#need-token', { state: 'hidden' })
  await untilPolled(page)
  assert.deepEqual(errors, [])
})

test('without admin.readToken the reads stay open, as before', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token: ADMIN } }))
  for (const path of ['/status', '/metrics', '/console/overview', '/console/history']) assert.equal((await get(proxy.adminUrl + path)).status, 200, path)
  const page = await get(`${proxy.adminUrl}/`)
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/)
  assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'.*connect-src 'self'/)
  assert.equal(page.headers.get('set-cookie'), null)
  assert.equal((await get(`${proxy.adminUrl}/console/assets/..%2Fconsole.ts`)).status, 404)
})

test('admin.readToken shorter than 16 characters stops start-up naming the key', () => {
  assert.throws(() => resolveConfig({ pools: { legacy: ['http://a'], migrated: ['http://b'] }, admin: { readToken: 'short' } }),
    /admin\.readToken = \(5 characters, not shown\): must be at least 16 characters/)
})

test('with workers: 2 the primary\'s own /metrics needs the read token too', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const adminPort = await freePort()
  const file = join(tempDir(t, 'dbshift-console-'), 'dbshift.yaml')
  writeFileSync(file, [
    `listen: 127.0.0.1:${await freePort()}`,
    `adminListen: 127.0.0.1:${adminPort}`,
    'workers: 2',
    `pools: { legacy: ['${legacy.url}'], migrated: ['${migrated.url}'] }`,
    `redis: { url: '${redis.url}' }`,
    `admin: { token: '${ADMIN}', readToken: '${READ}' }`
  ].join('\n'))
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, DBSHIFT_CONFIG: file }, stdio: ['ignore', 'pipe', 'inherit'] })
  const exited = once(child, 'exit')
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    await exited
  })
  let out = ''
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`dbshift exited with ${String(code)}: ${out}`)))
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (/"role":"primary".*"msg":"dbshift is listening"/.test(out)) resolve()
    })
  })
  const admin = `http://127.0.0.1:${adminPort}`
  for (const path of ['/metrics', '/status']) {
    const refused = await get(admin + path)
    assert.equal(refused.status, 401, path)
    assert.equal(JSON.parse(refused.body).error, 'DBSHIFT_ERR_UNAUTHORIZED', path)
    assert.equal((await get(admin + path, READ)).status, 200, path)
  }
  assert.match((await get(`${admin}/metrics`, ADMIN)).body, /dbshift_rollout_percent/)
  assert.equal((await get(`${admin}/`)).status, 200)
})
