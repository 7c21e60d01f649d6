import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { test } from 'node:test'
import { parse } from 'yaml'
import { promtool } from './prometheus/promtool.ts'

const RULES = 'config/prometheus/dbshift-rules.yml'
const RULE_TESTS = readdirSync('test/prometheus').filter((name) => name.endsWith('.test.yml')).map((name) => `test/prometheus/${name}`)

interface RuleFile { groups: Array<{ rules: Array<{ alert?: string, record?: string, expr: string }> }> }
interface RuleTestFile { tests: Array<{ alert_rule_test?: Array<{ alertname: string, exp_alerts?: unknown[] }> }> }

test('promtool check rules accepts the shipped rule file', async () => {
  const { code, output } = await promtool(['check', 'rules', RULES])
  assert.equal(code, 0, output)
  assert.match(output, /SUCCESS/)
})

test('promtool test rules: every alert fires when it should and stays silent when it should not', async () => {
  const { code, output } = await promtool(['test', 'rules', ...RULE_TESTS])
  assert.equal(code, 0, output)
})

test('every alert of the rule file has a promtool case where it fires and one where it stays silent', () => {
  const rules = parse(readFileSync(RULES, 'utf8')) as RuleFile
  const alerts = rules.groups.flatMap((group) => group.rules).flatMap((rule) => rule.alert ?? [])
  assert.deepEqual(alerts.sort(), [
    'DBShiftConfigErrors', 'DBShiftDown', 'DBShiftFeaturesPaused', 'DBShiftMigratedErrorRateHigh', 'DBShiftMigratedErrorsAboveLegacy',
    'DBShiftFenceReleasedUnsafe', 'DBShiftMigratedLatencyAboveLegacy', 'DBShiftRedisUnreachable', 'DBShiftRollbackNotSafe', 'DBShiftRolledBack',
    'DBShiftRolloutStalled', 'DBShiftWritesFenced'
  ].sort())
  const firing = new Set<string>()
  const silent = new Set<string>()
  for (const file of RULE_TESTS) {
    for (const group of (parse(readFileSync(file, 'utf8')) as RuleTestFile).tests) {
      for (const check of group.alert_rule_test ?? []) {
        if ((check.exp_alerts?.length ?? 0) > 0) firing.add(check.alertname)
        else silent.add(check.alertname)
      }
    }
  }
  for (const alert of alerts) {
    assert.ok(firing.has(alert), `${alert} has no promtool case where it fires`)
    assert.ok(silent.has(alert), `${alert} has no promtool case where it stays silent`)
  }
})
