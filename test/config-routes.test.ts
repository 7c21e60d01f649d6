import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { resolveConfig } from '../src/config.ts'
import { tempDir } from './helpers.ts'

const pools = { legacy: ['http://127.0.0.1:1'], migrated: ['http://127.0.0.1:2'] }
const SECRET = 'k7Qw9-a-cookie-secret-32-chars-ok'

const failure = (file: unknown, env: NodeJS.ProcessEnv = {}): string => {
  try {
    resolveConfig(file, env)
  } catch (err) {
    assert.equal((err as { code?: string }).code, 'DBSHIFT_ERR_CONFIG')
    return (err as Error).message
  }
  assert.fail('the configuration was accepted')
}

test('routes, the read-your-writes window and the cookie secret have defaults and are read from the file or the environment', () => {
  const plain = resolveConfig({ pools })
  assert.deepEqual(plain.routes, [])
  assert.equal(plain.rollout.readYourWritesMs, 2_000)
  assert.equal(plain.rollout.cookieSecret, undefined)
  const routes = [
    { name: 'static', path: '/static/**', mode: 'legacy' },
    { name: 'search', path: '/search', methods: ['POST'], mode: 'split', class: 'read' },
    { name: 'reports', path: '/reports/**', mode: 'split' }
  ]
  const config = resolveConfig({ pools, routes, rollout: { readYourWritesMs: 5_000, cookieSecret: 'x'.repeat(40) } }, { DBSHIFT_COOKIE_SECRET: SECRET })
  assert.deepEqual(config.routes, routes)
  assert.equal(config.rollout.readYourWritesMs, 5_000)
  assert.equal(config.rollout.cookieSecret, SECRET, 'the environment wins over the file')
  assert.equal(resolveConfig({ pools, rollout: { readYourWritesMs: 0 } }).rollout.readYourWritesMs, 0)
})

test('a short cookie secret is refused without being shown', () => {
  const fromFile = failure({ pools, rollout: { cookieSecret: 'hunter2-hunter2' } })
  assert.equal(fromFile, 'invalid configuration: rollout.cookieSecret = (15 characters, not shown): must be at least 32 characters')
  const fromEnv = failure({ pools }, { DBSHIFT_COOKIE_SECRET: 'hunter2' })
  assert.match(fromEnv, /^invalid configuration: rollout\.cookieSecret \(from DBSHIFT_COOKIE_SECRET\) = \(7 characters, not shown\): must be at least 32 characters$/)
  assert.ok(!fromEnv.includes('hunter2') && !fromFile.includes('hunter2'))
})

test('each bad route is refused with its key, its value and the rule', () => {
  const route = (extra: Record<string, unknown>): unknown => ({ pools, routes: [{ name: 'a', path: '/a/**', mode: 'split', ...extra }] })
  assert.match(failure({ pools, routes: [{ name: 'a', path: '/a', mode: 'split' }, { name: 'a', path: '/b', mode: 'legacy' }] }), /routes\.1\.name = "a": must be unique/)
  assert.match(failure(route({ name: 'default' })), /routes\.0\.name = "default": must not be "default"/)
  assert.match(failure(route({ name: 'has space' })), /routes\.0\.name = "has space": must be 1 to 64 letters, digits/)
  assert.match(failure(route({ path: 'a/**' })), /routes\.0\.path = "a\/\*\*": must start with "\/"/)
  assert.match(failure(route({ path: '/a//b' })), /routes\.0\.path = "\/a\/\/b": must be a normalised path/)
  assert.match(failure(route({ path: '/a/../b' })), /routes\.0\.path = "\/a\/\.\.\/b": must be a normalised path/)
  assert.match(failure(route({ path: '/a/' })), /routes\.0\.path = "\/a\/": must not end with "\/"/)
  assert.match(failure(route({ path: '/a/{b,c' })), /routes\.0\.path = "\/a\/\{b,c": is not a valid glob/)
  assert.match(failure(route({ mode: 'both' })), /routes\.0\.mode = "both": must be one of split, legacy, migrated/)
  assert.match(failure(route({ class: 'readonly' })), /routes\.0\.class = "readonly": must be one of read, write/)
  assert.match(failure(route({ methods: ['get'] })), /routes\.0\.methods\.0 = "get": must be an upper-case HTTP method/)
  assert.match(failure(route({ methods: [] })), /routes\.0\.methods = \[\]/)
  assert.match(failure(route({ glob: '/a' })), /routes\.0\.glob: unknown key \(allowed: name, path, methods, mode, class\)/)
  assert.match(failure({ pools, routes: [{ name: 'a', path: '/a' }] }), /routes\.0\.mode: is required/)
  assert.match(failure({ pools, rollout: { readYourWritesMs: -1 } }), /rollout\.readYourWritesMs = -1: must be a whole number of milliseconds from 0 \(off\) to 600000/)
  assert.match(failure({ pools, rollout: { readYourWritesMs: 1.5 } }), /rollout\.readYourWritesMs = 1\.5/)
})

test('start-up stops with exit status 2 and one line naming a duplicate route', (t) => {
  const dir = tempDir(t, 'dbshift-routes-')
  const file = join(dir, 'dbshift.yaml')
  writeFileSync(file, [
    'pools: { legacy: ["http://127.0.0.1:1"], migrated: ["http://127.0.0.1:2"] }',
    'routes:',
    '  - { name: reports, path: "/reports/**", mode: split }',
    '  - { name: reports, path: "/reports-v2/**", mode: legacy }'
  ].join('\n'))
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts'], { env: { ...process.env, DBSHIFT_CONFIG: file }, encoding: 'utf8', timeout: 30_000 })
  assert.equal(run.status, 2, run.stderr)
  const lines = run.stderr.trim().split('\n')
  assert.equal(lines.length, 1, run.stderr)
  assert.match(lines[0] as string, /routes\.1\.name = "reports": must be unique/)
})
