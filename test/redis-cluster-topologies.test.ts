import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { Cluster, Redis } from 'ioredis'
import { freePort, getAs, startProcess, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

/** Polls an external condition until it holds or the deadline passes. */
async function until (what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** A small Redis Cluster: three masters on free ports, slots spread by `redis-cli --cluster create`. */
async function startCluster (t: TestContext): Promise<{ url: string, client: Cluster }> {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-cluster-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const ports: number[] = []
  while (ports.length < 3) {
    // The cluster bus gets a free port of its own: by default it is port + 10000, which nobody checked was free.
    const port = await freePort()
    const busPort = await freePort()
    const started = await startProcess(t, 'redis-server', [
      '--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
      '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000'
    ], /Ready to accept connections/).then(() => true, (err: Error) => {
      // Another process took one of the two ports between the check and the bind: try two others.
      if (!/Address already in use/.test(err.message)) throw err
      return false
    })
    if (started) ports.push(port)
  }
  const create = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8' })
  assert.equal(create.status, 0, `redis-cli --cluster create failed: ${create.stdout}${create.stderr}`)
  const probes = ports.map((port) => new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 1 }))
  t.after(() => { for (const probe of probes) probe.disconnect() })
  await until('cluster_state:ok on every node', async () => {
    const infos = await Promise.all(probes.map(async (probe) => await probe.cluster('INFO')))
    return infos.every((info) => info.includes('cluster_state:ok'))
  })
  const client = new Cluster(ports.map((port) => ({ host: '127.0.0.1', port })))
  client.on('error', () => {})
  t.after(() => client.disconnect())
  return { url: `redis+cluster://${ports.map((p) => `127.0.0.1:${p}`).join(',')}`, client }
}

test('through a redis+cluster:// URL dbshift routes, follows a plain SET and hears changes made through it', async (t) => {
  const cluster = await startCluster(t)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  await cluster.client.set('dbshift:{default}:percent', '0')
  const { app, url } = await startProxy(t, testConfig(cluster.url, legacy.url, migrated.url))
  await untilRollout(app, (s) => s.percent === 0)
  assert.equal((await getAs(url, 'alice')).version, 'legacy')

  // A plain SET on whichever node owns the slot is picked up by the poll.
  await cluster.client.set('dbshift:{default}:percent', '100')
  await untilRollout(app, (s) => s.percent === 100)
  assert.equal((await getAs(url, 'alice')).version, 'migrated')

  // A change through dbshift: one Lua script over the hash-tagged keys, audited, announced by pub/sub.
  const second = await startProxy(t, testConfig(cluster.url, legacy.url, migrated.url))
  await untilRollout(second.app, (s) => s.percent === 100)
  const result = await app.control.setPercent(20, { by: 'cluster-test', source: 'api' })
  assert.equal(result.status, 'ok')
  await untilRollout(second.app, (s) => s.percent === 20)
  assert.equal((await getAs(second.url, 'alice')).version, 'migrated') // bucket 698 < 2000
  assert.equal((await getAs(second.url, 'bob')).version, 'legacy') // bucket 7528
  const audit = await cluster.client.xrange('dbshift:{default}:audit', '-', '+')
  assert.ok(audit.some(([, fields]) => fields.join(' ').includes('by cluster-test')), 'the change is in the audit stream')
})

test('through a redis+sentinel:// URL dbshift finds the master and follows a plain SET', async (t) => {
  const master = await startRedis(t)
  await master.client.set('dbshift:{default}:percent', '100')
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-sentinel-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const port = await freePort()
  const conf = join(dir, 'sentinel.conf')
  writeFileSync(conf, [
    `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
    `sentinel monitor shop 127.0.0.1 ${master.port} 1`,
    'sentinel down-after-milliseconds shop 5000'
  ].join('\n') + '\n')
  await startProcess(t, 'redis-sentinel', [conf], /Sentinel ID is|monitor master/)
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated')
  const { app, url } = await startProxy(t, testConfig(`redis+sentinel://127.0.0.1:${port}/shop`, legacy.url, migrated.url))
  await untilRollout(app, (s) => s.percent === 100)
  assert.equal((await getAs(url, 'bob')).version, 'migrated')
  await master.client.set('dbshift:{default}:percent', '0')
  await untilRollout(app, (s) => s.percent === 0)
  assert.equal((await getAs(url, 'bob')).version, 'legacy')
})
