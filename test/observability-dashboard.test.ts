import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { Registry } from 'prom-client'
import { parse } from 'yaml'
import { Metrics } from '../src/metrics.ts'

const DASHBOARD = 'config/grafana/dbshift-dashboard.json'
const RULES = 'config/prometheus/dbshift-rules.yml'

const KEYWORDS = new Set(['and', 'or', 'unless', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'bool', 'inf', 'nan'])

/** The metric names a PromQL expression reads (functions, keywords, labels, durations and variables left out). */
function metricNames (expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // label values
    .replace(/\{[^}]*\}/g, '') // label matchers
    .replace(/\[[^\]]*\]/g, '') // ranges and subqueries
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '') // label lists
  const names: string[] = []
  for (const match of bare.matchAll(/(?<![\w$.:])[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const word = match[0]
    const after = bare.slice((match.index ?? 0) + word.length).trimStart()
    if (after.startsWith('(') || KEYWORDS.has(word.toLowerCase())) continue
    names.push(word)
  }
  return names
}

/** Every PromQL query of a dashboard: panel targets, annotations, and query variables (inside label_values()). */
function queries (dashboard: Dashboard): string[] {
  return [
    ...dashboard.panels.flatMap((panel) => (panel.targets ?? []).map((target) => target.expr)),
    ...dashboard.annotations.list.map((annotation) => annotation.expr),
    ...dashboard.templating.list.filter((variable) => variable.type === 'query').map((variable) => {
      const query = typeof variable.query === 'string' ? variable.query : variable.query.query
      return /^label_values\((.*),\s*\w+\)$/.exec(query)?.[1] ?? query
    })
  ]
}

interface Dashboard {
  panels: Array<{ title: string, targets?: Array<{ expr: string }> }>
  annotations: { list: Array<{ expr: string }> }
  templating: { list: Array<{ type: string, query: string | { query: string } }> }
}

/** The series names dbshift exports: each metric, and a histogram's _bucket, _sum and _count. */
async function exported (): Promise<Set<string>> {
  const registry = new Registry()
  const metrics = new Metrics(registry)
  metrics.guardThreshold.labels('L1').set(0.05)
  const names = new Set<string>()
  for (const metric of await registry.getMetricsAsJSON()) {
    names.add(metric.name)
    if (String(metric.type) === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(metric.name + suffix)
  }
  return names
}

test('the PromQL metric-name reader finds metrics and nothing else', () => {
  assert.deepEqual(metricNames('histogram_quantile(0.99, sum by (version, le) (rate(dbshift_request_duration_seconds_bucket{job="$job",code=~"5.."}[$__rate_interval])))'),
    ['dbshift_request_duration_seconds_bucket'])
  assert.deepEqual(metricNames('(a_total > on (job) group_left () b:c:max) and on (job) x offset 3d unless up == 1e3 or vector(1)'), ['a_total', 'b:c:max', 'x', 'up'])
  assert.deepEqual(metricNames('changes(max(dbshift_rolled_back{job="$job"})[2m:30s]) > 0'), ['dbshift_rolled_back'])
})

test('every query of the Grafana dashboard reads only metrics dbshift exports', async () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard
  const known = await exported()
  const all = queries(dashboard)
  assert.ok(all.length >= 15, `${all.length} queries`)
  for (const query of all) {
    const names = metricNames(query)
    assert.ok(names.length > 0, `no metric in ${query}`)
    for (const name of names) assert.ok(known.has(name), `${name} (in ${query}) is not a metric dbshift exports`)
  }
  // What the migration team watches: per-version QPS, error rate, p50/p99, the percentage and rollbacks over time.
  const panel = (title: string): string => {
    const found = dashboard.panels.find((p) => p.title === title)
    assert.ok(found?.targets !== undefined, `no panel "${title}"`)
    return found.targets.map((target) => target.expr).join('\n')
  }
  assert.match(panel('Requests per second by version'), /sum by \(version\) \(rate\(dbshift_requests_total/)
  assert.match(panel('Error rate by version'), /code=~"5\.\."/)
  assert.match(panel('Latency p50 and p99 by version'), /histogram_quantile\(0\.5,[^]*histogram_quantile\(0\.99,/)
  assert.match(panel('Rollout percentage and rollbacks'), /dbshift_rollout_percent[^]*dbshift_rolled_back/)
  assert.match(panel('Write dial and route dials'), /dbshift_rollout_percent[^]*dbshift_rollout_write_percent[^]*max by \(route\) \(dbshift_rollout_route_percent/)
})

test('the rule file reads only metrics dbshift exports, its own recordings, and up', async () => {
  const file = parse(readFileSync(RULES, 'utf8')) as { groups: Array<{ rules: Array<{ record?: string, expr: string }> }> }
  const rules = file.groups.flatMap((group) => group.rules)
  const known = await exported()
  for (const rule of rules) if (rule.record !== undefined) known.add(rule.record)
  known.add('up')
  for (const rule of rules) {
    for (const name of metricNames(rule.expr)) assert.ok(known.has(name), `${name} (in ${rule.expr}) is neither exported nor recorded`)
  }
})
