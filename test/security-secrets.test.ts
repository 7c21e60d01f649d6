import assert from 'node:assert/strict'
import { request } from 'node:http'
import { test } from 'node:test'
import { redactUrl, redactUrls, withoutQuery } from '../src/redact.ts'
import { startProxy, startProxyProcess, startRedis, startUpstream, testConfig, type ProxyProcess } from './helpers.ts'

async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** Every line a process printed is one JSON object (a log line), whatever printed it. */
function assertJsonLines (proc: ProxyProcess): void {
  for (const line of proc.output) {
    if (line === '') continue
    assert.doesNotThrow(() => JSON.parse(line), `not a JSON log line: ${line}`)
  }
}

test('redactUrl: no credentials, query or fragment, also in multi-host Redis URLs', () => {
  assert.equal(redactUrl('https://hooks.example/services/x?token=abc#frag'), 'https://hooks.example/services/x')
  assert.equal(redactUrl('http://user:pa%40ss@prometheus:9090/api/v1/query?q=1'), 'http://prometheus:9090/api/v1/query')
  assert.equal(redactUrl('redis://:secret@redis:6379/0'), 'redis://redis:6379/0')
  assert.equal(redactUrl('redis+sentinel://:secret@s1:26379,s2:26379/mymaster'), 'redis+sentinel://s1:26379,s2:26379/mymaster')
  assert.equal(redactUrl('redis://127.0.0.1:6379'), 'redis://127.0.0.1:6379')
  assert.equal(withoutQuery('/orders?token=abc'), '/orders')
  assert.deepEqual(redactUrls({ a: ['http://u:p@h/x?y'], b: 3, c: 'plain text?' }), { a: ['http://h/x'], b: 3, c: 'plain text?' })
})

test('a wrong Redis password, then a rotated one: neither (nor the old one) appears in any line the process prints', async (t) => {
  const [oldPassword, newPassword, wrongPassword] = ['old-secret-pw-1111', 'new-secret-pw-2222', 'wrong-secret-pw-0000']
  const redis = await startRedis(t)
  await redis.client.config('SET', 'requirepass', oldPassword) // the test's own connection stays logged in
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const env = (password: string): NodeJS.ProcessEnv => ({ REDIS_URL: `redis://:${password}@127.0.0.1:${redis.port}`, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url })
  const wrongPass = /WRONGPASS/
  const sawWrongPass = (proc: ProxyProcess): boolean => proc.output.some((line) => wrongPass.test(line))

  const wrong = await startProxyProcess(t, env(wrongPassword))
  await until('the refused login is logged', () => sawWrongPass(wrong))

  const rotated = await startProxyProcess(t, env(oldPassword))
  await until('connected with the old password', () => rotated.logs.some((line) => line.msg === 'connected to Redis'))
  await redis.client.config('SET', 'requirepass', newPassword)
  await redis.client.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')
  await until('the refused login after the rotation is logged', () => sawWrongPass(rotated))

  for (const proc of [wrong, rotated]) {
    const leaked = proc.output.filter((line) => [oldPassword, newPassword, wrongPassword].some((secret) => line.includes(secret)))
    assert.deepEqual(leaked, [], 'no password in any line')
    assertJsonLines(proc)
    const listening = proc.logs.find((line) => line.msg === 'dbshift is listening')
    assert.equal(listening?.redis, `redis://127.0.0.1:${redis.port}`, 'the start-up line names Redis without its password')
  }
})

test('ioredis\'s own console warnings are JSON log lines too', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  // A password for a Redis that needs none: ioredis prints "[WARN] … does not require a password" to the console.
  const proc = await startProxyProcess(t, { REDIS_URL: `redis://:unneeded-pw-3333@127.0.0.1:${redis.port}`, DBSHIFT_LEGACY: legacy.url, DBSHIFT_MIGRATED: migrated.url })
  await until('the warning is printed', () => proc.output.some((line) => line.includes('does not require a password')))
  assertJsonLines(proc)
  const warning = proc.logs.find((line) => String(line.msg).includes('does not require a password'))
  assert.equal(warning?.level, 40)
  assert.equal(warning?.source, 'console')
})

test('request logs carry no query string; /status shows the webhook and Prometheus URLs without credentials or query', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, {
    log: { requests: 'info' },
    guards: {
      l2: { prometheusUrl: 'http://scraper:prom-pw-4444@prometheus:9090/api/v1/query?tenant=t-5555' },
      l3: { webhookUrl: 'https://hooks.example/services/T0/B0?token=hook-token-6666' }
    }
  }))
  const res = await fetch(`${proxy.url}/orders?token=query-token-7777&page=2`, { headers: { 'x-user-id': 'alice' } })
  assert.equal(res.status, 200)
  await res.arrayBuffer()
  await until('the request is logged', () => proxy.logs.some((line) => line.msg === 'request'))
  const line = proxy.logs.find((entry) => entry.msg === 'request')
  assert.equal(line?.url, '/orders')
  assert.ok(!JSON.stringify(proxy.logs).includes('query-token-7777'), 'the query string is in no log line')

  const statusText = await (await fetch(`${proxy.adminUrl}/status`)).text()
  const status = JSON.parse(statusText) as { guards: { config: { l2: { prometheusUrl: string }, l3: { webhookUrl: string } } } }
  assert.equal(status.guards.config.l2.prometheusUrl, 'http://prometheus:9090/api/v1/query')
  assert.equal(status.guards.config.l3.webhookUrl, 'https://hooks.example/services/T0/B0')
  for (const secret of ['prom-pw-4444', 't-5555', 'hook-token-6666', 'scraper']) assert.ok(!statusText.includes(secret), `${secret} is not in /status`)
})

/** GET on the admin port with the Host header as given (fetch would not let a test set it). */
async function getWithHost (adminUrl: string, path: string, host: string): Promise<{ status: number, body: Record<string, unknown> }> {
  const { port } = new URL(adminUrl)
  return await new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { host } }, (res) => {
      let text = ''
      res.on('data', (chunk: Buffer) => { text += chunk.toString() })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }) })
    })
    req.on('error', reject)
    req.end()
  })
}

test('the admin port answers only to its own names (DNS rebinding): a foreign Host is refused, local and configured names are not', async (t) => {
  const redis = await startRedis(t)
  const [legacy, migrated] = await Promise.all([startUpstream(t, 'legacy'), startUpstream(t, 'migrated')])
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { admin: { allowedHosts: ['dbshift-admin.internal', '.ops.example'] } }))
  const { port } = new URL(proxy.adminUrl)

  for (const path of ['/status', '/metrics', '/which/alice']) {
    const refused = await getWithHost(proxy.adminUrl, path, 'evil.example')
    assert.equal(refused.status, 403, path)
    assert.equal(refused.body.error, 'DBSHIFT_ERR_HOST_NOT_ALLOWED')
    assert.match(String(refused.body.message), /evil\.example.*admin\.allowedHosts/)
  }
  for (const host of [`evil.example:${port}`, 'localhost.evil.example', 'ops.example.evil']) {
    assert.equal((await getWithHost(proxy.adminUrl, '/status', host)).status, 403, host)
  }
  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, 'LOCALHOST', `[::1]:${port}`, 'app.localhost', '10.1.2.3:9901', 'dbshift-admin.internal:9901', 'a.ops.example']) {
    assert.equal((await getWithHost(proxy.adminUrl, '/status', host)).status, 200, host)
  }
})
