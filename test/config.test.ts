import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { resolveConfig } from '../src/config.ts'
import { tempDir } from './helpers.ts'

const pools = { legacy: ['http://127.0.0.1:1'], migrated: ['http://127.0.0.1:2'] }

const failure = (file: unknown, env: NodeJS.ProcessEnv = {}): string => {
  try {
    resolveConfig(file, env)
  } catch (err) {
    assert.equal((err as { code?: string }).code, 'DBSHIFT_ERR_CONFIG')
    return (err as Error).message
  }
  assert.fail('the configuration was accepted')
}

test('defaults follow SPEC "Configuration"', () => {
  const config = resolveConfig({ pools })
  assert.equal(config.listen, '0.0.0.0:8080')
  assert.equal(config.adminListen, '127.0.0.1:9901')
  assert.equal(config.rollout.name, 'default')
  assert.equal(config.rollout.salt, 'default')
  assert.equal(config.rollout.initialPercent, 0)
  assert.equal(config.redis.url, 'redis://127.0.0.1:6379')
  assert.equal(config.admin.token, undefined)
})

test('environment variables override the file', () => {
  const config = resolveConfig({ pools, rollout: { name: 'from-file' } }, {
    DBSHIFT_LISTEN: '127.0.0.1:18080',
    DBSHIFT_ADMIN_LISTEN: '[::1]:19901',
    DBSHIFT_LEGACY: 'http://10.0.0.1:80, http://10.0.0.2:80',
    DBSHIFT_MIGRATED: 'http://10.0.1.1:80',
    DBSHIFT_ROLLOUT: 'checkout',
    REDIS_URL: 'redis://cache:6380/2',
    DBSHIFT_ADMIN_TOKEN: 's3cret-token-of-enough-length'
  })
  assert.equal(config.listen, '127.0.0.1:18080')
  assert.equal(config.adminListen, '[::1]:19901')
  assert.deepEqual(config.pools.legacy.members, ['http://10.0.0.1:80', 'http://10.0.0.2:80'])
  assert.deepEqual(config.pools.migrated.members, ['http://10.0.1.1:80'])
  assert.equal(config.rollout.name, 'checkout')
  assert.equal(config.rollout.salt, 'checkout')
  assert.equal(config.redis.url, 'redis://cache:6380/2')
  assert.equal(config.admin.token, 's3cret-token-of-enough-length')
})

test('each bad value is refused with the key, the value and the rule', () => {
  assert.match(failure({ pools, rollout: { initialPercent: 150 } }), /rollout\.initialPercent = 150: must be <= 100/)
  assert.match(failure({ pools, rollout: { initialPercent: 20.555 } }), /rollout\.initialPercent = 20\.555: must be multiple of 0\.01/)
  assert.match(failure({ pools, rollout: { strategy: 'random' } }), /rollout\.strategy = "random": must be one of hash, tail/)
  assert.match(failure({ pools, rollout: { anonymous: 'both' } }), /rollout\.anonymous = "both": must be one of legacy, migrated/)
  assert.match(failure({ pools, rollot: {} }), /rollot: unknown key \(allowed: listen, adminListen/)
  assert.match(failure({ pools: { legacy: pools.legacy } }), /pools\.migrated: is required/)
  assert.match(failure({ pools: { legacy: [], migrated: pools.migrated } }), /pools\.legacy = \[\]: must NOT have fewer than 1 items/)
  assert.match(failure({ pools, listen: 'localhost' }), /listen = "localhost": must be host:port/)
  assert.match(failure({ pools, listen: '0.0.0.0:70000' }), /listen = "0.0.0.0:70000": the port must be 0 to 65535/)
  assert.match(failure({ pools, log: { level: 'loud' } }), /log\.level = "loud": must be one of fatal, error/)
  assert.match(failure({ pools, upstream: { connections: 0 } }), /upstream\.connections = 0: must be >= 1/)
  assert.match(failure({ pools, admin: { token: 'short' } }), /admin\.token = \(5 characters, not shown\): must be at least 16 characters/, 'a token is never echoed')
  assert.match(failure({ pools, redis: { url: 'http://x' } }), /redis\.url = "http:\/\/x": must be a redis:\/\//)
  assert.match(failure([1, 2]), /the file must hold a YAML mapping/)
})

test('a bad value from the environment names the variable', () => {
  assert.match(failure({ pools }, { DBSHIFT_MIGRATED: 'ftp://x' }), /pools\.migrated\.0 \(from DBSHIFT_MIGRATED\) = "ftp:\/\/x": must be an http:\/\/ or https:\/\/ base URL/)
  assert.match(failure({ pools }, { DBSHIFT_ROLLOUT: 'bad name!' }), /rollout\.name \(from DBSHIFT_ROLLOUT\) = "bad name!"/)
  assert.match(failure({ pools }, { REDIS_URL: 'localhost:6379' }), /redis\.url \(from REDIS_URL\)/)
})

test('the process exits with status 2 and one line naming the key on a bad config', (t) => {
  const dir = tempDir(t, 'dbshift-config-')
  const file = join(dir, 'bad.yaml')
  writeFileSync(file, 'pools:\n  legacy: [http://127.0.0.1:1]\n  migrated: [http://127.0.0.1:2]\nrollout:\n  initialPercent: 101\n')
  const run = (env: NodeJS.ProcessEnv): ReturnType<typeof spawnSync> => spawnSync(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    env: { PATH: process.env.PATH, DBSHIFT_CONFIG: file, ...env }, encoding: 'utf8', timeout: 20_000
  })
  const bad = run({})
  assert.equal(bad.status, 2)
  assert.equal(bad.stderr, 'dbshift: invalid configuration: rollout.initialPercent = 101: must be <= 100\n')

  writeFileSync(file, 'pools: [unclosed\n')
  const yaml = run({})
  assert.equal(yaml.status, 2)
  assert.match(String(yaml.stderr), /not valid YAML/)

  const missing = run({ DBSHIFT_CONFIG: join(dir, 'nope.yaml') })
  assert.equal(missing.status, 2)
  assert.match(String(missing.stderr), /DBSHIFT_CONFIG = ".*nope\.yaml": the file cannot be read/)
})
