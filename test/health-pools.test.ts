import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { resolveConfig } from '../src/config.ts'
import { writeFileSync } from 'node:fs'
import { captureLogs, freePort, getAs, startProxy, startRedis, startUpstream, untilRollout } from './helpers.ts'
import { configFile, poolConfig, startReloadable } from './health-helpers.ts'

test('a pool\'s own headersTimeoutMs answers 504 for that pool while the other pool, on the global timeout, still waits', async (t) => {
  const redis = await startRedis(t)
  const held: Array<() => void> = []
  const hang = (name: string) => (req: IncomingMessage, res: ServerResponse): void => {
    req.resume()
    held.push(() => { res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ servedBy: name })) })
  }
  const legacy = await startUpstream(t, 'legacy', hang('legacy'))
  const migrated = await startUpstream(t, 'migrated', hang('migrated'))
  t.after(() => { for (const release of held) release() })
  const proxy = await startProxy(t, poolConfig(redis.url, {
    legacy: [legacy.url],
    migrated: { members: [migrated.url], upstream: { headersTimeoutMs: 300 } }
  }, { upstream: { headersTimeoutMs: 60_000, retries: 0 } }))
  await redis.client.sadd('dbshift:{default}:allow', 'mia')
  await untilRollout(proxy.app, (s) => s.allow.has('mia'))

  let legacyDone = false
  const legacyAnswer = getAs(proxy.url, 'lee').then((answer) => { legacyDone = true; return answer })
  const migratedAnswer = await getAs(proxy.url, 'mia')
  assert.equal(migratedAnswer.status, 504)
  assert.equal(migratedAnswer.body.error, 'DBSHIFT_ERR_UPSTREAM_TIMEOUT')
  assert.equal(migratedAnswer.version, 'migrated')
  assert.equal(legacyDone, false, 'the legacy request, on the global 60 s timeout, is still waiting')
  for (const release of held.splice(0)) release()
  const answer = await legacyAnswer
  assert.equal(answer.status, 200)
  assert.equal(answer.body.servedBy, 'legacy')
})

test('a pool written as a list and one written as an object are both valid; members may be host names', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  // `localhost` is resolved by undici as each connection is made, as a Kubernetes headless Service needs.
  const byName = migrated.url.replace('127.0.0.1', 'localhost')
  const proxy = await startProxy(t, poolConfig(redis.url, { legacy: [legacy.url], migrated: { members: [byName] } }))
  await redis.client.sadd('dbshift:{default}:allow', 'mia')
  await untilRollout(proxy.app, (s) => s.allow.has('mia'))
  assert.equal((await getAs(proxy.url, 'lee')).body.servedBy, 'legacy')
  assert.equal((await getAs(proxy.url, 'mia')).body.servedBy, 'migrated')
  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as { pools: Record<string, Array<{ member: string, healthy: boolean, check: string }>> }
  assert.deepEqual(status.pools.migrated.map((m) => [m.member, m.healthy, m.check]), [[byName, true, 'off']])
})

test('a bad key inside a pool object is named with its path, value and rule', () => {
  const base = { legacy: ['http://10.0.0.1:80'] }
  const failure = (pools: Record<string, unknown>): string => {
    try {
      resolveConfig({ pools: { ...base, ...pools } })
    } catch (err) {
      return (err as Error).message
    }
    return 'accepted'
  }
  assert.match(failure({ migrated: { members: ['http://10.0.0.2:80'], healthCheck: { intervalMs: 5 } } }), /pools\.migrated\.healthCheck\.intervalMs = 5: must be >= 100/)
  assert.match(failure({ migrated: { members: ['http://10.0.0.2:80'], upstream: { headersTimeoutMs: 0 } } }), /pools\.migrated\.upstream\.headersTimeoutMs = 0/)
  assert.match(failure({ migrated: { members: ['http://10.0.0.2:80'], outlier: { ejectAfter: 3 } } }), /pools\.migrated\.outlier\.ejectAfter: unknown key \(allowed: consecutiveErrors, ejectMs, maxEjectedPercent\)/)
  assert.match(failure({ migrated: ['ftp://x'] }), /pools\.migrated\.0 = "ftp:\/\/x": must be an http:\/\/ or https:\/\/ base URL/)
  assert.match(failure({ migrated: { members: ['ftp://x'] } }), /pools\.migrated\.members\.0 = "ftp:\/\/x"/)
  assert.match(failure({ migrated: 'http://10.0.0.2:80' }), /pools\.migrated = "http:\/\/10\.0\.0\.2:80": must be a list of base URLs or \{ members, healthCheck, outlier, upstream \}/)
  const fromEnv = resolveConfig({ pools: { ...base, migrated: { members: ['http://10.0.0.2:80'], healthCheck: { path: '/health' } } } }, { DBSHIFT_MIGRATED: 'http://10.0.0.3:80,http://10.0.0.4:80' })
  assert.deepEqual(fromEnv.pools.migrated.members, ['http://10.0.0.3:80', 'http://10.0.0.4:80'], 'DBSHIFT_MIGRATED sets the members')
  assert.equal(fromEnv.pools.migrated.healthCheck?.path, '/health', 'and keeps the pool\'s other settings')
  assert.equal(failure({ migrated: { members: ['http://10.0.0.2:80'] } }), 'accepted')
  const config = resolveConfig({ pools: { ...base, migrated: { members: ['http://10.0.0.2:80'], healthCheck: { path: '/health' } } } })
  assert.deepEqual(config.pools.migrated.healthCheck, { path: '/health', intervalMs: 2000, timeoutMs: 1000, unhealthyAfter: 3, healthyAfter: 2 })
  assert.deepEqual(config.pools.legacy, { members: ['http://10.0.0.1:80'], outlier: { consecutiveErrors: 5, ejectMs: 30000, maxEjectedPercent: 10 } })
})

test('each pool retries by its own upstream.retries; a reload changes the global one', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const dead = `http://127.0.0.1:${await freePort()}` // refuses every connection: nothing reaches an upstream
  const noEjection = { consecutiveErrors: 0 }
  const file = (retries: number): Record<string, unknown> => ({
    listen: '127.0.0.1:0',
    adminListen: '127.0.0.1:0',
    pools: {
      legacy: { members: [dead, legacy.url], outlier: noEjection },
      migrated: { members: [dead, migrated.url], outlier: noEjection, upstream: { retries: 2 } }
    },
    upstream: { retries },
    redis: { url: redis.url, pollIntervalMs: 100, fullSyncIntervalMs: 500, commandTimeoutMs: 500 }
  })
  const { log } = captureLogs()
  const { path } = configFile(t, file(0))
  const proxy = await startReloadable(t, path, log)
  await redis.client.sadd('dbshift:{default}:allow', 'mia')
  await untilRollout(proxy.app, (s) => s.allow.has('mia'))

  // Round-robin over two members: every other request meets the dead one.
  const statuses = async (user: string): Promise<number[]> => {
    const answers: number[] = []
    for (let i = 0; i < 4; i++) answers.push((await getAs(proxy.url, user)).status)
    return answers
  }
  assert.deepEqual(await statuses('mia'), [200, 200, 200, 200], 'migrated retries (its own upstream.retries: 2) on its live member')
  assert.deepEqual((await statuses('lee')).sort(), [200, 200, 502, 502], 'legacy, on the global upstream.retries: 0, does not')

  writeFileSync(path, JSON.stringify(file(1)))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['upstream.retries'] })
  assert.deepEqual(await statuses('lee'), [200, 200, 200, 200], 'after the reload legacy retries too')
})
