import assert from 'node:assert/strict'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { SHADOW_HEADER } from '../src/guards/l3-shadow.ts'
import { captureLogs, getAs, nextGuardEvent, startRedis, startUpstream } from './helpers.ts'
import { configFile, startReloadable } from './health-helpers.ts'

test('a reload that changes the migrated pool sends the L3 shadow requests to the new member', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy', (req, res) => { req.resume(); res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":1}') })
  const same = (req: IncomingMessage, res: ServerResponse): void => { req.resume(); res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":1}') }
  const before = await startUpstream(t, 'before', same)
  const after = await startUpstream(t, 'after', same)
  const file = (migrated: string): Record<string, unknown> => ({
    listen: '127.0.0.1:0',
    adminListen: '127.0.0.1:0',
    pools: { legacy: [legacy.url], migrated: [migrated] },
    guards: { l3: { enabled: true, sampleRate: 1 } },
    redis: { url: redis.url, pollIntervalMs: 100, fullSyncIntervalMs: 500, commandTimeoutMs: 500 }
  })
  const { log } = captureLogs()
  const { path } = configFile(t, file(before.url))
  const proxy = await startReloadable(t, path, log)
  const shadowed = (server: { requests: IncomingMessage[] }): number => server.requests.filter((req) => req.headers[SHADOW_HEADER] !== undefined).length

  const compared = nextGuardEvent(proxy.app, 'shadow')
  assert.equal((await getAs(proxy.url, 'lee')).body.id, 1)
  assert.deepEqual(await compared, ['match'])
  assert.equal(shadowed(before), 1, 'at 0% a user on legacy is shadowed to migrated')

  proxy.write(file(after.url))
  assert.deepEqual(await proxy.app.reload(), { ok: true, changed: ['pools.migrated.members'] })
  const again = nextGuardEvent(proxy.app, 'shadow')
  await getAs(proxy.url, 'lee')
  assert.deepEqual(await again, ['match'])
  assert.equal(shadowed(after), 1, 'the shadow request went to the member the reload brought in')
  assert.equal(shadowed(before), 1, 'and not to the one it removed')
})
