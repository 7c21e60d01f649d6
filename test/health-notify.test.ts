import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { test } from 'node:test'
import { getAs, startProxy, startRedis, startUpstream } from './helpers.ts'
import { nextMemberChange, poolConfig } from './health-helpers.ts'

const checks = { path: '/health', intervalMs: 100, timeoutMs: 500, unhealthyAfter: 1, healthyAfter: 1 }

async function dbshift (env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stdout, stderr }
}

test('each change of a member\'s state is sent to notify once, without holding anything up; dbshift status shows it', async (t) => {
  const redis = await startRedis(t)
  const state = { dead: false }
  let checksSeen = 0
  const checksWaiting: Array<{ count: number, resolve: () => void }> = []
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    if (req.url === '/health') {
      checksSeen++
      for (const wait of checksWaiting.filter((w) => checksSeen >= w.count)) { checksWaiting.splice(checksWaiting.indexOf(wait), 1); wait.resolve() }
    }
    res.writeHead(req.url === '/health' && state.dead ? 503 : 200, { 'content-type': 'application/json' }).end('{"servedBy":"migrated"}')
  })
  const moreChecks = async (count: number): Promise<void> => { await new Promise<void>((resolve) => checksWaiting.push({ count: checksSeen + count, resolve })) }

  // The receiver takes each notification and holds its answer: a slow webhook must delay nothing.
  const received: Array<Record<string, unknown>> = []
  const held: ServerResponse[] = []
  const arrivals: Array<() => void> = []
  const hook = await startUpstream(t, 'hook', (req, res) => {
    let text = ''
    req.on('data', (chunk: Buffer) => { text += chunk.toString() })
    req.on('end', () => {
      received.push(JSON.parse(text) as Record<string, unknown>)
      held.push(res)
      for (const arrived of arrivals.splice(0)) arrived()
    })
  })
  const nextNotification = async (): Promise<void> => { await new Promise<void>((resolve) => arrivals.push(resolve)) }
  t.after(() => { for (const res of held) res.end() })

  const proxy = await startProxy(t, poolConfig(redis.url, { legacy: [legacy.url], migrated: { members: [migrated.url], healthCheck: checks } }, {
    notify: { webhookUrl: `${hook.url}/hooks/dbshift`, timeoutMs: 60_000, retries: 0 },
    redis: { heartbeatIntervalMs: 100 }
  }))
  await moreChecks(3)
  assert.equal(received.length, 0, 'no change, no notification')

  state.dead = true
  const notified = nextNotification()
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && !change.serving)
  await notified
  await moreChecks(5) // more failed checks: the state has not changed again
  assert.equal((await getAs(proxy.url, 'lee')).body.servedBy, 'legacy', 'requests are served while the webhook holds its answer')
  assert.equal(received.length, 1, 'one notification for one change, not one per check')
  assert.deepEqual({ ...received[0], at: undefined }, {
    text: `dbshift default: migrated pool member ${migrated.url} takes no new requests: 1 health check in a row failed (GET /health answered 503)`,
    event: 'member_unhealthy',
    rollout: 'default',
    version: 'migrated',
    member: migrated.url,
    healthy: false,
    why: '1 health check in a row failed (GET /health answered 503)',
    at: undefined
  })

  await proxy.app.heartbeat.beat()
  const status = await dbshift({ REDIS_URL: redis.url, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml' }, 'status')
  assert.equal(status.code, 0, status.stderr)
  assert.match(status.stdout, /LEGACY rps\s+err\s+up\s+MIGRATED rps\s+err\s+up/)
  assert.match(status.stdout, new RegExp(`members\\s+${proxy.app.instanceId}: migrated ${migrated.url} takes no new requests`))
  const json = JSON.parse((await dbshift({ REDIS_URL: redis.url, DBSHIFT_CONFIG: 'test/fixtures/empty.yaml' }, 'status', '--json')).stdout) as { fleet: { instances: Array<{ pools: unknown }> } }
  assert.deepEqual(json.fleet.instances[0]?.pools, { legacy: { members: 1, healthy: 1, down: [] }, migrated: { members: 1, healthy: 0, down: [migrated.url] } })
  const fleet = await (await fetch(`${proxy.adminUrl}/fleet`)).json() as { instances: Array<{ pools: unknown }> }
  assert.deepEqual(fleet.instances[0]?.pools, json.fleet.instances[0]?.pools, 'GET /fleet carries the same')

  state.dead = false
  const back = nextNotification()
  await nextMemberChange(proxy.app, (version, change) => version === 'migrated' && change.serving)
  await back
  assert.deepEqual(received.map((n) => [n.event, n.member]), [['member_unhealthy', migrated.url], ['member_healthy', migrated.url]])
})
