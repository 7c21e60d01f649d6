import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { parse } from 'yaml'
import { PLACEHOLDER_TOKENS, resolveConfig } from '../src/config.ts'
import { startProxyProcess, startRedis, startUpstream, tempDir } from './helpers.ts'

const POOLS = { DBSHIFT_LEGACY: 'http://127.0.0.1:1', DBSHIFT_MIGRATED: 'http://127.0.0.1:2' }

/** Runs `src/main.ts` with this environment until it exits (it must, within 20 s). */
async function run (env: NodeJS.ProcessEnv): Promise<{ status: number | null, stdout: string, stderr: string }> {
  const merged = { PATH: process.env.PATH, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml', DBSHIFT_LISTEN: '127.0.0.1:0', DBSHIFT_ADMIN_LISTEN: '127.0.0.1:0', REDIS_URL: 'redis://127.0.0.1:1', ...env }
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: Object.fromEntries(Object.entries(merged).filter(([, value]) => value !== undefined)),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
  const [status] = await once(child, 'exit') as [number | null]
  clearTimeout(timer)
  return { status, stdout, stderr }
}

/** Exit status 2 and exactly one line on stderr matching `line`; no stack trace anywhere. */
function assertRefused (result: { status: number | null, stdout: string, stderr: string }, line: RegExp): void {
  assert.equal(result.status, 2, `exit status (stderr: ${result.stderr})`)
  const lines = result.stderr.split('\n').filter((l) => l !== '')
  assert.equal(lines.length, 1, `one line: ${result.stderr}`)
  assert.match(lines[0] as string, line)
  assert.doesNotMatch(result.stdout + result.stderr, /\n\s+at /, 'no stack trace')
}

async function busyPort (t: TestContext): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.close() })
  return (server.address() as AddressInfo).port
}

test('a busy proxy or admin port: one line naming the key, exit 2', async (t) => {
  const port = await busyPort(t)
  assertRefused(await run({ ...POOLS, DBSHIFT_LISTEN: `127.0.0.1:${port}` }), new RegExp(`^dbshift: cannot listen: listen = "127\\.0\\.0\\.1:${port}": the address is already in use`))
  assertRefused(await run({ ...POOLS, DBSHIFT_ADMIN_LISTEN: `127.0.0.1:${port}` }), new RegExp(`^dbshift: cannot listen: adminListen = "127\\.0\\.0\\.1:${port}": the address is already in use`))
})

test('a busy proxy or admin port with workers: 2: one line, exit 2, no worker started', async (t) => {
  const port = await busyPort(t)
  const dir = tempDir(t)
  for (const [key, listen, adminListen] of [['listen', port, 0], ['adminListen', 0, port]] as const) {
    const file = join(dir, `${key}.yaml`)
    writeFileSync(file, `workers: 2\nlisten: 127.0.0.1:${listen}\nadminListen: 127.0.0.1:${adminListen}\n`)
    const result = await run({ ...POOLS, DBSHIFT_CONFIG: file, DBSHIFT_LISTEN: undefined, DBSHIFT_ADMIN_LISTEN: undefined })
    assertRefused(result, new RegExp(`^dbshift: cannot listen: ${key} = .*already in use`))
    assert.doesNotMatch(result.stdout, /dbshift is listening/, 'no worker was started')
  }
})

test('a config file that cannot be read, a CA file that cannot be read: one line naming it, exit 2', async (t) => {
  const dir = tempDir(t)
  assertRefused(await run({ ...POOLS, DBSHIFT_CONFIG: dir }), /^dbshift: invalid configuration: DBSHIFT_CONFIG = ".*": the file cannot be read \(EISDIR/)
  // Node itself warns first ("Warning: Ignoring extra certs from …") and would go on without the CA: dbshift stops.
  const missing = await run({ ...POOLS, NODE_EXTRA_CA_CERTS: join(dir, 'ca.pem') })
  assertRefused({ ...missing, stderr: missing.stderr.replace(/^Warning: Ignoring extra certs from .*\n/m, '') }, /^dbshift: NODE_EXTRA_CA_CERTS = ".*ca\.pem": the certificate file cannot be read \(ENOENT\)/)
})

test('an unknown DBSHIFT_* variable and an empty one are refused like unknown keys, exit 2', async () => {
  assertRefused(await run({ ...POOLS, DBSHIFT_LEGACYY: 'http://127.0.0.1:3' }), /^dbshift: invalid configuration: DBSHIFT_LEGACYY: unknown variable \(allowed: DBSHIFT_LISTEN, .*\)/)
  assertRefused(await run({ ...POOLS, DBSHIFT_ROLLOUT: '' }), /^dbshift: invalid configuration: rollout\.name \(from DBSHIFT_ROLLOUT\) = "": must not be empty/)
  assert.throws(() => resolveConfig({}, { ...POOLS, DBSHIFT_ADMIN_TOKEN: '' }), /admin\.token \(from DBSHIFT_ADMIN_TOKEN\) = "": must not be empty/)
})

test('every admin token shipped as a placeholder (deploy/, docker-compose.yml) is refused, and no token is echoed', () => {
  const shipped = new Set<string>(PLACEHOLDER_TOKENS)
  for (const flavour of readdirSync('deploy')) {
    const path = join('deploy', flavour, 'dbshift-admin-token.yaml')
    let text: string
    try { text = readFileSync(path, 'utf8') } catch { continue }
    const token = (parse(text) as { stringData?: { token?: string } }).stringData?.token
    if (token !== undefined) shipped.add(token)
  }
  for (const match of readFileSync('docker-compose.yml', 'utf8').matchAll(/DBSHIFT_ADMIN_TOKEN:-([^}]+)\}/g)) shipped.add(match[1] as string)
  assert.ok(shipped.size >= 2)
  for (const token of [...shipped, 'please-change-me-0123456789', 'REPLACE-ME-WITH-SOMETHING-LONG']) {
    assert.throws(() => resolveConfig({}, { ...POOLS, DBSHIFT_ADMIN_TOKEN: token }), (err: Error) => {
      assert.match(err.message, /admin\.token \(from DBSHIFT_ADMIN_TOKEN\): is a placeholder/)
      assert.ok(!err.message.includes(token), 'the token is not echoed')
      return true
    }, token)
  }
  assert.doesNotThrow(() => resolveConfig({}, { ...POOLS, DBSHIFT_ADMIN_TOKEN: '9f86d081884c7d659a2feaa0c55ad015' }))
})

test('the start-up line names the config file, the pools, Redis without its password, the rollout and whether changes are enabled', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const proc = await startProxyProcess(t, { REDIS_URL: `redis://:unneeded-pw-8888@127.0.0.1:${redis.port}`, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url, DBSHIFT_ROLLOUT: 'checkout' })
  const line = proc.logs.find((entry) => entry.msg === 'dbshift is listening')
  assert.ok(line !== undefined)
  assert.equal(line.config, 'test/fixtures/empty.yaml')
  assert.deepEqual(line.pools, { legacy: [legacy.url], migrated: [migrated.url] })
  assert.equal(line.redis, `redis://127.0.0.1:${redis.port}`)
  assert.equal(line.rollout, 'checkout')
  assert.equal(line.changes, 'disabled (no admin token)')
})
