import assert from 'node:assert/strict'
import { test } from 'node:test'
import { startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const TOKEN = 'a-token-of-at-least-16-characters'

async function call (url: string, method: string, body?: unknown, token?: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const headers: Record<string, string> = {}
  if (body !== undefined) headers['content-type'] = 'application/json'
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
  return { status: res.status, body: await res.json() as Record<string, unknown> }
}

test('with no token configured, changes are refused with a message saying how to set one; reads work', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url))
  for (const [method, path, body] of [['PUT', '/rollout', { percent: 20 }], ['POST', '/rollback', {}], ['POST', '/resume', undefined], ['PUT', '/allow/alice', undefined], ['POST', '/schedule', { steps: [1, 5] }]] as const) {
    const res = await call(adminUrl + path, method, body, TOKEN)
    assert.equal(res.status, 403, path)
    assert.equal(res.body.error, 'DBSHIFT_ERR_ADMIN_DISABLED')
    assert.match(res.body.message as string, /set DBSHIFT_ADMIN_TOKEN \(or admin\.token in the config file\)/)
  }
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null)
  assert.equal((await call(`${adminUrl}/status`, 'GET')).status, 200)
  assert.equal((await call(`${adminUrl}/fleet`, 'GET')).status, 200)
})

test('a wrong or missing token gets 401 before the body is looked at; the right one changes and audits', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { app, adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token: TOKEN, tokenName: 'deploy-bot' } }))

  for (const token of [undefined, 'wrong-token-of-enough-length', `${TOKEN}x`, TOKEN.slice(0, -1)]) {
    const res = await call(`${adminUrl}/rollout`, 'PUT', { percent: 999 }, token)
    assert.equal(res.status, 401, String(token))
    assert.equal(res.body.error, 'DBSHIFT_ERR_UNAUTHORIZED')
  }
  const basic = await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Basic ${TOKEN}`, 'content-type': 'application/json' }, body: '{"percent":20}' })
  assert.equal(basic.status, 401)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null)

  const ok = await call(`${adminUrl}/rollout`, 'PUT', { percent: 20, reason: 'step 2' }, TOKEN)
  assert.equal(ok.status, 200)
  assert.deepEqual(ok.body, { percent: 20, previous: null })
  await untilRollout(app, (s) => s.percent === 20)
  const [entry] = await redis.client.xrevrange('dbshift:{default}:audit', '+', '-', 'COUNT', 1)
  const fields = Object.fromEntries(chunk(entry?.[1] ?? []))
  assert.equal(fields.action, 'set_percent')
  assert.equal(fields.new, '20')
  assert.equal(fields.by, 'deploy-bot@127.0.0.1')
  assert.equal(fields.source, 'api')
  assert.equal(fields.reason, 'step 2')

  const audit = await call(`${adminUrl}/audit?count=1`, 'GET')
  assert.equal((audit.body.entries as Array<Record<string, string>>)[0]?.by, 'deploy-bot@127.0.0.1')
})

test('bodies are validated by schema: each error is JSON with a stable code', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const { adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token: TOKEN } }))
  const bad: Array<[string, string, unknown]> = [
    ['PUT', '/rollout', { percent: 150 }],
    ['PUT', '/rollout', { percent: -1 }],
    ['PUT', '/rollout', { percent: 20.555 }],
    ['PUT', '/rollout', { percent: 'abc' }],
    ['PUT', '/rollout', {}],
    ['PUT', '/rollout', { percent: 20, extra: true }],
    ['POST', '/rollback', { reason: 42 }],
    ['POST', '/schedule', { steps: [] }],
    ['POST', '/schedule', { steps: [5, 1] }],
    ['POST', '/schedule', { steps: [1, 5], bake: 'soon' }]
  ]
  for (const [method, path, body] of bad) {
    const res = await call(adminUrl + path, method, body, TOKEN)
    assert.equal(res.status, 400, `${path} ${JSON.stringify(body)}`)
    assert.equal(res.body.error, 'DBSHIFT_ERR_INVALID_VALUE', `${path} ${JSON.stringify(body)}`)
    assert.equal(typeof res.body.message, 'string')
  }
  // Every two-decimal percentage is accepted, although most are not exact binary fractions.
  for (const percent of [0.29, 33.33, 57.01, 100]) {
    const res = await call(`${adminUrl}/rollout`, 'PUT', { percent }, TOKEN)
    assert.equal(res.status, 200, String(percent))
  }
  await redis.client.del('dbshift:{default}:percent')
  const notJson = await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: '{"percent":' })
  assert.equal(notJson.status, 400)
  assert.equal((await notJson.json() as { error: string }).error, 'DBSHIFT_ERR_BAD_REQUEST')
  assert.equal(await redis.client.exists('dbshift:{default}:percent', 'dbshift:{default}:state', 'dbshift:{default}:schedule'), 0)
})

function chunk (flat: string[]): Array<[string, string]> {
  const pairs: Array<[string, string]> = []
  for (let i = 0; i + 1 < flat.length; i += 2) pairs.push([flat[i] as string, flat[i + 1] as string])
  return pairs
}
