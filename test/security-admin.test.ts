import { test } from 'node:test'
import assert from 'node:assert/strict'
import { connect } from 'node:net'
import { networkInterfaces } from 'node:os'
import { resolveConfig } from '../src/config.ts'
import { startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'

const TOKEN = 'a-token-of-at-least-16-characters'

test('admin changes resist tricks with the token, oversized and malformed bodies; nothing reaches Redis', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const { adminUrl } = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { token: TOKEN } }))
  const put = async (headers: Record<string, string>, body: string): Promise<{ status: number, error: string }> => {
    const res = await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers: { 'content-type': 'application/json', ...headers }, body })
    const text = await res.text()
    let error = ''
    try { error = (JSON.parse(text) as { error: string }).error } catch { error = text }
    return { status: res.status, error }
  }
  const good = '{"percent":20}'

  // The token anywhere but a well-formed bearer header is no token.
  for (const headers of [
    { authorization: `Bearer ${TOKEN} ${TOKEN}` },
    { authorization: `Bearer  ${TOKEN.toUpperCase()}` },
    { authorization: `Token ${TOKEN}` },
    { authorization: TOKEN },
    { authorization: 'Bearer ' },
    { 'x-admin-token': TOKEN },
    { cookie: `token=${TOKEN}` }
  ] as Array<Record<string, string>>) assert.deepEqual(await put(headers, good), { status: 401, error: 'DBSHIFT_ERR_UNAUTHORIZED' }, JSON.stringify(headers))
  const query = await fetch(`${adminUrl}/rollout?token=${TOKEN}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: good })
  assert.equal(query.status, 401)

  const auth = { authorization: `Bearer ${TOKEN}` }
  // Oversized: refused unread (401 without a valid token, 413 with one).
  const huge = JSON.stringify({ percent: 20, reason: 'x'.repeat(100_000) })
  assert.equal((await put({}, huge)).status, 401)
  assert.equal((await put(auth, huge)).status, 413)
  // Malformed, wrongly typed or hostile bodies.
  for (const body of [
    '{"percent":20',
    '[20]',
    '"20"',
    'null',
    '{"percent":"20"}',
    '{"percent":1e400}',
    '{"percent":20,"__proto__":{"admin":true}}',
    '{"constructor":{"prototype":{"percent":100}}}',
    `${'['.repeat(5_000)}${']'.repeat(5_000)}`
  ]) {
    const res = await put(auth, body)
    assert.ok(res.status === 400, `${body.slice(0, 40)} → ${res.status}`)
    assert.match(res.error, /^DBSHIFT_ERR_(INVALID_VALUE|BAD_REQUEST)$/)
  }
  const form = await fetch(`${adminUrl}/rollout`, { method: 'PUT', headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' }, body: 'percent=20' })
  assert.equal(form.status, 415)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), null, 'none of it changed the rollout')
  assert.equal(({} as Record<string, unknown>).admin, undefined, 'no prototype was polluted')

  // The admin server is still healthy, and a proper change still works.
  assert.equal((await put(auth, good)).status, 200)
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '20')
})

test('the admin port listens on loopback unless configured otherwise', async (t) => {
  const defaults = resolveConfig({ pools: { legacy: ['http://127.0.0.1:1'], migrated: ['http://127.0.0.1:2'] } })
  assert.equal(defaults.adminListen, '127.0.0.1:9901')

  const external = Object.values(networkInterfaces()).flat().find((address) => address?.family === 'IPv4' && !address.internal)?.address
  if (external === undefined) return t.skip('this machine has no non-loopback IPv4 address to try')
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const config = testConfig(redis.url, legacy.url, migrated.url)
  config.listen = '0.0.0.0:0'
  config.adminListen = defaults.adminListen.replace(/:\d+$/, ':0')
  const { app } = await startProxy(t, config)
  const reachable = async (port: number): Promise<boolean> => {
    const socket = connect(port, external)
    const connected = await new Promise<boolean>((resolve) => {
      socket.once('connect', () => resolve(true))
      socket.once('error', () => resolve(false))
    })
    socket.destroy()
    return connected
  }
  const proxyPort = (app.proxy.server.address() as { port: number }).port
  const adminPort = (app.admin.server.address() as { port: number }).port
  assert.equal(await reachable(proxyPort), true, `the proxy port answers on ${external}`)
  assert.equal(await reachable(adminPort), false, `the admin port does not answer on ${external}`)
})
