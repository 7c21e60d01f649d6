import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { Registry } from 'prom-client'
import { parse } from 'yaml'
import { Metrics } from '../src/metrics.ts'
import { firstCells, readDoc, section } from './docs-tables.ts'

const page = readDoc('docs/observability.md')

test('the metric table has one row per dbshift metric, and no row for a metric that does not exist', async () => {
  const registry = new Registry()
  const metrics = new Metrics(registry, { defaultMetrics: false })
  metrics.guardThreshold.labels('L1').set(0.05)
  const exported = (await registry.getMetricsAsJSON()).map((metric) => metric.name).sort()
  const documented = firstCells(section(page, '## Metrics')).filter((name) => name.startsWith('dbshift_')).sort()
  assert.deepEqual(documented, exported)
})

test('the alert table lists every alert of the rule file', () => {
  const rules = parse(readFileSync('config/prometheus/dbshift-rules.yml', 'utf8')) as { groups: Array<{ rules: Array<{ alert?: string }> }> }
  const alerts = rules.groups.flatMap((group) => group.rules).flatMap((rule) => rule.alert ?? []).sort()
  assert.deepEqual(firstCells(section(page, '## Alerts')).sort(), alerts)
})
