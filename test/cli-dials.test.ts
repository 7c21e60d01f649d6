import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { Router } from '../src/routing/decide.ts'
import { startProxy, startRedis, startUpstream, tempDir, testConfig, untilRollout } from './helpers.ts'

interface Run { code: number | null, stdout: string, stderr: string, json: () => Record<string, unknown> }

/** Runs the dbshift command as a real process against the test's own Redis. */
async function dbshift (env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stdout, stderr, json: () => JSON.parse(stdout) as Record<string, unknown> }
}

const ROUTES_YAML = [
  'rollout:',
  '  name: shop',
  'routes:',
  '  - { name: static, path: "/static/**", mode: legacy }',
  '  - { name: reports, path: "/reports/**", mode: split }',
  ''
].join('\n')

/** A user of the split cohort at 50% reads and up to 10% writes (salt `shop`), above 10% on reports: found by search. */
function splitUser (): string {
  const router = new Router({ strategy: 'hash', salt: 'shop', anonymous: 'legacy' })
  for (let i = 0; ; i++) {
    const bucket = router.bucketOf(`user-${i}`)
    if (bucket >= 1000 && bucket < 5000) return `user-${i}`
  }
}

test('dbshift set --writes and --route turn the write and route dials; status and which show them', async (t) => {
  const redis = await startRedis(t)
  const file = join(tempDir(t, 'dbshift-dials-'), 'dbshift.yaml')
  writeFileSync(file, ROUTES_YAML)
  const env = { REDIS_URL: redis.url, DBSHIFT_CONFIG: file, DBSHIFT_OPERATOR: 'alice' }

  const set = await dbshift(env, 'set', '50', '--writes', '5', '--route', 'reports=2', '--reason', 'reads first', '--json')
  assert.equal(set.code, 0, set.stderr)
  assert.deepEqual(set.json(), { percent: 50, previous: null, state: 'active', writePercent: { percent: 5, previous: null }, routes: { reports: { percent: 2, previous: null } } })
  assert.deepEqual(await redis.client.mget('dbshift:{shop}:percent', 'dbshift:{shop}:write_percent', 'dbshift:{shop}:route:reports:percent'), ['50', '5', '2'])

  const human = await dbshift(env, 'set', '--writes', '6')
  assert.equal(human.code, 0, human.stderr)
  assert.equal(human.stdout, 'write_percent 5 → 6\n')

  const status = await dbshift(env, 'status')
  assert.match(status.stdout, /^writes {7}6% {2}\(writes are migrated below min\(write_percent, percent\)\)$/m)
  assert.match(status.stdout, /^routes {7}static legacy · reports split 2%$/m)
  const statusJson = (await dbshift(env, 'status', '--json')).json()
  assert.equal(statusJson.writePercent, 6)
  assert.deepEqual(statusJson.routes, [{ name: 'static', mode: 'legacy', percent: null }, { name: 'reports', mode: 'split', percent: 2 }])

  const user = splitUser()
  const which = await dbshift(env, 'which', user, '--json')
  assert.equal(which.code, 0, which.stderr)
  const routes = which.json().routes as Array<{ route: string, reads: { version: string, why: string }, writes: { version: string, why: string } }>
  assert.deepEqual(routes.map((r) => [r.route, r.reads.version, r.writes.version, r.writes.why]), [
    ['default', 'migrated', 'legacy', 'write_dial'],
    ['static', 'legacy', 'legacy', 'route'],
    ['reports', 'legacy', 'legacy', 'bucket']
  ])
  const whichHuman = await dbshift(env, 'which', user)
  assert.match(whichHuman.stdout, /^ {2}default {6}reads migrated \(bucket \d+ < 5000\), writes legacy \(write_dial\)$/m)

  const follow = await dbshift(env, 'set', '--writes', 'follow', '--route', 'reports=follow', '--json')
  assert.equal(follow.code, 0, follow.stderr)
  assert.deepEqual(follow.json(), { writePercent: { percent: null, previous: '6' }, routes: { reports: { percent: null, previous: '2' } } })
  assert.equal(await redis.client.exists('dbshift:{shop}:write_percent', 'dbshift:{shop}:route:reports:percent'), 0)

  const unknown = await dbshift(env, 'set', '--route', 'nope=3')
  assert.equal(unknown.code, 2)
  assert.match(unknown.stderr, /no route is named "nope" in the config's routes \(configured: static, reports\)/)
  await redis.client.set('dbshift:{shop}:freeze', 'L2: load')
  const frozen = await dbshift(env, 'set', '--writes', '60') // above what writes follow now (percent, 50)
  assert.equal(frozen.code, 3, frozen.stderr)
  assert.match(frozen.stderr, /lowering write_percent still works/)

  const audit = (await dbshift(env, 'audit', '--count', '20', '--json')).json().entries as Array<Record<string, string>>
  assert.deepEqual(audit.map((e) => `${e.action}:${e.old}→${e.new}${e.route === undefined ? '' : `@${e.route}`}`).reverse(), [
    'set_percent:→50', 'set_write_percent:→5', 'set_route_percent:→2@reports', 'set_write_percent:5→6',
    'set_write_percent:6→', 'set_route_percent:2→@reports', 'set_write_percent_refused:→60'
  ])
})

test('PUT /rollout turns the write and route dials (null deletes one, 0 is a value); /status and /which show them', async (t) => {
  const redis = await startRedis(t)
  const upstream = await startUpstream(t, 'both')
  const token = 'dials-admin-token-0123456789'
  const proxy = await startProxy(t, testConfig(redis.url, upstream.url, upstream.url, {
    rollout: { name: 'shop' },
    admin: { token },
    routes: [{ name: 'static', path: '/static/**', mode: 'legacy' }, { name: 'reports', path: '/reports/**', mode: 'split' }]
  }))
  const put = async (body: unknown): Promise<{ status: number, body: Record<string, unknown> }> => {
    const res = await fetch(`${proxy.adminUrl}/rollout`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() as Record<string, unknown> }
  }
  const both = await put({ percent: 50, writePercent: 0, routes: { reports: 2 }, reason: 'reads first' })
  assert.equal(both.status, 200, JSON.stringify(both.body))
  assert.deepEqual(both.body, { percent: 50, previous: null, writePercent: { percent: 0, previous: null }, routes: { reports: { percent: 2, previous: null } } })
  assert.equal(await redis.client.get('dbshift:{shop}:write_percent'), '0')
  await untilRollout(proxy.app, (s) => s.writePercent === 0 && s.routePercent.get('reports') === 2)

  const status = await (await fetch(`${proxy.adminUrl}/status`)).json() as Record<string, unknown>
  assert.equal(status.writePercent, 0)
  assert.deepEqual(status.routes, [{ name: 'static', path: '/static/**', mode: 'legacy', percent: null }, { name: 'reports', path: '/reports/**', mode: 'split', percent: 2 }])
  assert.deepEqual(status.readYourWrites, { windowMs: 2000, cookie: false })

  const user = splitUser()
  const which = await (await fetch(`${proxy.adminUrl}/which/${user}`)).json() as { version: string, routes: Array<{ route: string, reads: { version: string }, writes: { version: string, why: string } }> }
  assert.equal(which.version, 'migrated')
  assert.deepEqual(which.routes.map((r) => [r.route, r.reads.version, r.writes.version]), [['default', 'migrated', 'legacy'], ['static', 'legacy', 'legacy'], ['reports', 'legacy', 'legacy']])

  assert.deepEqual((await put({ writePercent: null })).body, { writePercent: { percent: null, previous: '0' } })
  assert.equal(await redis.client.exists('dbshift:{shop}:write_percent'), 0)
  assert.equal((await put({ routes: { nope: 1 } })).status, 400)
  assert.equal((await put({ writePercent: 150 })).status, 400)
  assert.equal((await put({})).status, 400)
})
