import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import { getAs, nextGuardEvent, startRedis, startUpstream, untilRollout } from './helpers.ts'
import { adminCall, cohorts, dbshift, keysOf, startWayBackProxy, wayBackConfig } from './way-back-helpers.ts'

/** A webhook receiver that keeps every JSON body. */
async function startHook (t: TestContext): Promise<{ url: string, bodies: Array<Record<string, unknown>>, until: (predicate: (body: Record<string, unknown>) => boolean) => Promise<Record<string, unknown>> }> {
  const bodies: Array<Record<string, unknown>> = []
  const waiters: Array<() => void> = []
  const server = createServer((req, res) => {
    let text = ''
    req.on('data', (chunk: Buffer) => { text += chunk.toString() })
    req.on('end', () => {
      bodies.push(JSON.parse(text) as Record<string, unknown>)
      res.end('ok')
      for (const wake of waiters.splice(0)) wake()
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const until = async (predicate: (body: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> => {
    for (;;) {
      const found = bodies.find(predicate)
      if (found !== undefined) return found
      await new Promise<void>((resolve) => waiters.push(resolve))
    }
  }
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`, bodies, until }
}

async function writeStatus (url: string, user: string): Promise<number> {
  const res = await fetch(`${url}/orders`, { method: 'POST', headers: { 'x-user-id': user }, body: '{}' })
  await res.arrayBuffer()
  return res.status
}

test('L3 fences in dual_write too: the webhook carries the fence id, and only signal:data_restored holding it (or an operator) lifts it', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const dataRollback = await startHook(t)
  const notify = await startHook(t)
  const rollout = 'wb-l3'
  const k = keysOf(rollout)
  await redis.client.set(k.percent, '50')
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout, {
    notify: { webhookUrl: notify.url, retries: 0 },
    guards: { l3: { enabled: true, sampleRate: 0, webhookUrl: dataRollback.url, webhookRetries: 0 } }
  }))
  assert.equal(proxy.app.sync.current.wayBack, 'dual_write')
  const { migrated: [alice], legacy: [carol] } = cohorts(proxy.app, 50, 1) as { migrated: [string], legacy: [string] }

  const tripped = nextGuardEvent(proxy.app, 'trip')
  await redis.client.set(k.inconsistentSignal, '1')
  await tripped
  const body = await dataRollback.until((b) => b.event === 'rollback')
  const fenceId = body.fence as string
  assert.equal(typeof fenceId, 'string')
  await untilRollout(proxy.app, (s) => s.fence?.id === fenceId)
  assert.equal(proxy.app.sync.current.fence?.level, 'L3')
  assert.equal(await redis.client.hget(k.fence, 'deadline'), '')
  assert.equal((await getAs(proxy.url, alice)).version, 'legacy')
  assert.equal(await writeStatus(proxy.url, alice), 503)
  assert.equal(await writeStatus(proxy.url, carol), 200)
  await notify.until((b) => b.event === 'fence' && b.fence === fenceId)

  // A lag reading does not lift an L3 fence, nor does another fence's id.
  await redis.client.set(k.reverseLagSignal, '0', 'EX', 60)
  await redis.client.set(k.dataRestoredSignal, 'some-other-fence')
  await nextGuardEvent(proxy.app, 'signals', (values) => values.get(k.dataRestoredSignal) === 'some-other-fence')
  await nextGuardEvent(proxy.app, 'signals')
  assert.equal(proxy.app.sync.current.fence?.id, fenceId)
  assert.equal(await writeStatus(proxy.url, alice), 503)

  // The data-rollback job is done.
  const lifted = nextGuardEvent(proxy.app, 'fence', (what, id) => what === 'released' && id === fenceId)
  await redis.client.set(k.dataRestoredSignal, fenceId)
  assert.equal((await lifted)[2], 'restored')
  await untilRollout(proxy.app, (s) => s.fence === undefined)
  assert.equal(await writeStatus(proxy.url, alice), 200)
  const released = await notify.until((b) => b.event === 'fence_release')
  assert.match(String(released.text), /fence lifted/)
})

test('none: the guards freeze the ramp and alert instead of rolling back; a manual rollback needs force', async (t) => {
  const redis = await startRedis(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    req.resume()
    res.writeHead(500).end('broken')
  })
  const notify = await startHook(t)
  const rollout = 'wb-none'
  const k = keysOf(rollout)
  await redis.client.set(k.percent, '50')
  await redis.client.set(k.wayBack, 'none')
  const proxy = await startWayBackProxy(t, wayBackConfig(redis.url, legacy.url, migrated.url, rollout, { notify: { webhookUrl: notify.url, retries: 0 } }))
  const { migrated: users } = cohorts(proxy.app, 50, 30)

  const frozen = nextGuardEvent(proxy.app, 'frozenInstead')
  for (const user of users) await getAs(proxy.url, user)
  const [level] = await frozen
  assert.equal(level, 'L1')
  assert.equal(proxy.app.sync.current.rolledBack, false)
  assert.equal(await redis.client.get(k.state), null)
  assert.match(await redis.client.get(k.freeze) ?? '', /no way back: the ramp is frozen instead of rolled back/)
  const alert = await notify.until((b) => b.event === 'rollback_refused')
  assert.match(String(alert.text), /no way back: the guards froze the ramp instead of rolling back/)
  // Still on migrated: there is no way back to send them to.
  assert.equal((await getAs(proxy.url, users[0])).version, 'migrated')
  // The freeze holds the ramp.
  assert.equal((await adminCall(proxy.adminUrl, 'PUT', '/rollout', { percent: 60 })).body.error, 'DBSHIFT_ERR_RAMP_FROZEN')

  // A manual rollback without force is refused, with a clear code, and audited.
  const refused = await adminCall(proxy.adminUrl, 'POST', '/rollback', { reason: 'let me out' })
  assert.equal(refused.status, 409)
  assert.equal(refused.body.error, 'DBSHIFT_ERR_NO_WAY_BACK')
  assert.match(String(refused.body.message), /"force": true/)
  const cli = await dbshift(redis.url, rollout, 'rollback')
  assert.equal(cli.code, 3, cli.stderr)
  assert.match(cli.stderr, /add --force/)
  assert.equal(proxy.app.sync.current.rolledBack, false)
  const audit = (await redis.client.xrange(k.audit, '-', '+')).map(([, f]) => f[f.indexOf('action') + 1])
  assert.ok(audit.includes('rollback_refused'))

  // With force it works.
  const forced = await dbshift(redis.url, rollout, 'rollback', '--force', '--reason', 'we accept the loss')
  assert.equal(forced.code, 0, forced.stderr)
  await untilRollout(proxy.app, (s) => s.rolledBack)
  assert.equal(proxy.app.sync.current.fence, undefined)
  assert.equal((await adminCall(proxy.adminUrl, 'POST', '/resume', {})).status, 200)
  await untilRollout(proxy.app, (s) => !s.rolledBack)
  const viaApi = await adminCall(proxy.adminUrl, 'POST', '/rollback', { force: true })
  assert.equal(viaApi.status, 200, JSON.stringify(viaApi.body))
})
