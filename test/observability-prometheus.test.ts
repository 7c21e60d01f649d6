import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { freePort, getAs, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'

const RULES = resolve('config/prometheus/dbshift-rules.yml')
const DASHBOARD = resolve('config/grafana/dbshift-dashboard.json')
const MISSING = 'prometheus is not on PATH. Install it (Debian/Ubuntu: `apt-get install prometheus`) or run `bash .ci/run`, which installs it.'

interface Series { metric: Record<string, string>, value: [number, string] }

/** A Prometheus server of the test's own on loopback, scraping `target` every second with the shipped rules. */
async function startPrometheus (t: TestContext, target: string): Promise<{ query: (expr: string) => Promise<Series[]>, get: (path: string) => Promise<any> }> {
  const dir = await mkdtemp(join(tmpdir(), 'dbshift-prometheus-'))
  const port = await freePort()
  await writeFile(join(dir, 'prometheus.yml'), [
    'global: { scrape_interval: 1s, evaluation_interval: 1s }',
    `rule_files: [${JSON.stringify(RULES)}]`,
    'scrape_configs:',
    `  - { job_name: dbshift, static_configs: [{ targets: [${JSON.stringify(target)}] }] }`
  ].join('\n'))
  const child = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve)
    child.once('error', (err: NodeJS.ErrnoException) => reject(err.code === 'ENOENT' ? new Error(MISSING) : err))
  })
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await exited
    }
    await rm(dir, { recursive: true, force: true })
  })
  await spawned
  const base = `http://127.0.0.1:${port}`
  const get = async (path: string): Promise<any> => await (await fetch(base + path)).json()
  const deadline = Date.now() + 15_000
  for (;;) {
    const ready = await fetch(`${base}/-/ready`).then((res) => res.ok, () => false)
    if (ready) break
    if (Date.now() > deadline || child.exitCode !== null) assert.fail(`prometheus did not become ready: ${stderr}`)
    await sleep(100)
  }
  const query = async (expr: string): Promise<Series[]> => {
    const answer = await get(`/api/v1/query?query=${encodeURIComponent(expr)}`)
    assert.equal(answer.status, 'success', `${expr}: ${JSON.stringify(answer)}`)
    return answer.data.result as Series[]
  }
  return { query, get }
}

test('a real Prometheus scraping dbshift with the shipped rules sees both versions side by side, and every dashboard query runs', async (t) => {
  const redis = await startRedis(t)
  await redis.client.flushall()
  const legacy = await startUpstream(t, 'legacy')
  let n = 0
  const migrated = await startUpstream(t, 'migrated', (_req, res) => {
    res.writeHead(++n % 4 === 0 ? 500 : 200) // a quarter of the migrated answers fail
    res.end()
  })
  // The L1 guard is off: it would rightly roll back on those failures, and this test wants both versions.
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { guards: { l1: { enabled: false } } }))
  await redis.client.set('dbshift:{default}:percent', '50')
  await untilRollout(proxy.app, (s) => s.percent === 50)
  const prometheus = await startPrometheus(t, new URL(proxy.adminUrl).host)

  // Traffic to both versions until Prometheus has scraped enough of it to compute rates.
  const load = { stopped: false }
  const traffic = (async () => {
    for (let i = 0; !load.stopped; i++) {
      await getAs(proxy.url, `user-${i % 200}`)
      await sleep(5)
    }
  })()
  t.after(async () => { load.stopped = true; await traffic })
  const deadline = Date.now() + 30_000
  let rates: Series[] = []
  while ((rates = await prometheus.query('version:dbshift_requests:rate1m > 0')).length < 2) {
    if (Date.now() > deadline) assert.fail(`the recording rules never showed both versions: ${JSON.stringify(rates)}`)
    await sleep(250)
  }
  load.stopped = true
  await traffic

  assert.deepEqual(rates.map((s) => s.metric.version).sort(), ['legacy', 'migrated'])
  assert.deepEqual((await prometheus.query('up{job="dbshift"}')).map((s) => s.value[1]), ['1'])
  const ratios = Object.fromEntries((await prometheus.query('version:dbshift_error_ratio:rate1m')).map((s) => [s.metric.version, Number(s.value[1])]))
  assert.equal(ratios.legacy, 0, 'legacy has no 5xx: 0, not missing')
  assert.ok((ratios.migrated ?? 0) > 0.1 && (ratios.migrated ?? 1) < 0.4, `migrated error ratio ${String(ratios.migrated)}`)
  assert.deepEqual((await prometheus.query('job:dbshift_rollout_percent:max')).map((s) => s.value[1]), ['50'])

  // Every rule evaluates without error against real dbshift output.
  const rules = await prometheus.get('/api/v1/rules')
  const health = rules.data.groups.flatMap((group: any) => group.rules.map((rule: any) => `${String(rule.name)} ${String(rule.health)} ${String(rule.lastError ?? '')}`))
  assert.equal(health.length, 21)
  for (const line of health) assert.match(line, / ok $/)

  // Every dashboard query, with Grafana's variables filled in, is valid PromQL; the panels that show the two
  // versions side by side have both.
  const dashboard = JSON.parse(await readFile(DASHBOARD, 'utf8')) as { panels: Array<{ title: string, targets?: Array<{ expr: string }> }>, annotations: { list: Array<{ expr: string }> } }
  const fill = (expr: string): string => expr.replaceAll('$__rate_interval', '1m').replaceAll('$job', 'dbshift').replaceAll('$instance', '.*')
  for (const expr of dashboard.annotations.list.map((a) => a.expr)) await prometheus.query(fill(expr))
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) {
      const result = await prometheus.query(fill(target.expr))
      if (/by version|Rollout percentage|Write dial/.test(panel.title) && !target.expr.includes('dbshift_guard_threshold') && !target.expr.includes('route_percent')) assert.ok(result.length > 0, `"${panel.title}" shows nothing: ${target.expr}`)
      if (/by version$/.test(panel.title) && !target.expr.includes('dbshift_guard_threshold')) {
        assert.deepEqual([...new Set(result.map((s) => s.metric.version))].sort(), ['legacy', 'migrated'], `"${panel.title}": ${target.expr}`)
      }
    }
  }
})
