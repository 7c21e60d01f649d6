import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { Registry } from 'prom-client'
import { parse } from 'yaml'
import { Metrics } from '../src/metrics.ts'

/** The rows of the README table that follows `heading`, as their first cells (without backticks). */
function firstCells (heading: string): string[] {
  const readme = readFileSync('README.md', 'utf8')
  const start = readme.indexOf(`\n${heading}\n`)
  assert.ok(start !== -1, `README has no "${heading}"`)
  const section = readme.slice(start + heading.length + 2).split(/\n#{2,3} /)[0] as string
  return section.split('\n').filter((line) => line.startsWith('| `')).map((line) => (line.split('|')[1] as string).trim())
}

test('the README metric table has one row per dbshift metric, and no row for a metric that does not exist', async () => {
  const registry = new Registry()
  const metrics = new Metrics(registry, { defaultMetrics: false })
  metrics.guardThreshold.labels('L1').set(0.05)
  const exported = (await registry.getMetricsAsJSON()).map((metric) => metric.name).sort()
  const documented = firstCells('### Metrics').map((cell) => cell.replace(/`/g, '')).filter((name) => name.startsWith('dbshift_')).sort()
  assert.deepEqual(documented, exported)
})

test('the README alert table lists every alert of the rule file', () => {
  const rules = parse(readFileSync('config/prometheus/dbshift-rules.yml', 'utf8')) as { groups: Array<{ rules: Array<{ alert?: string }> }> }
  const alerts = rules.groups.flatMap((group) => group.rules).flatMap((rule) => rule.alert ?? []).sort()
  assert.deepEqual(firstCells('### Alerts').map((cell) => cell.replace(/`/g, '')).sort(), alerts)
})
