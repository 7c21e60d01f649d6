import assert from 'node:assert/strict'
import { test } from 'node:test'
import { AUDIT_ACTIONS } from '../src/control/audit.ts'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { readDoc, rows, section, ticked } from './docs-tables.ts'

const page = readDoc('docs/redis-keys.md')

test('the Redis key table lists every key of src/rollout/keys.ts, and no key that does not exist', () => {
  const keys = new RolloutKeys('dbshift', 'N')
  const named = Object.values(keys).filter((value): value is string => typeof value === 'string' && value.startsWith('dbshift:'))
  const all = [...named, keys.handChange('<id>'), keys.traffic('<version>', '<slot>'), keys.routePercent('<name>')].sort()
  const documented = rows(section(page, '## The keys')).flatMap((cells) => ticked(cells[0] as string)).sort()
  assert.deepEqual(documented, all)
})

test('the audit actions table lists every action of AUDIT_ACTIONS once, and no action that does not exist', () => {
  const documented = rows(section(page, '## The audit trail')).flatMap((cells) => ticked(cells[0] as string)).sort()
  assert.deepEqual(documented, [...AUDIT_ACTIONS].sort())
})
