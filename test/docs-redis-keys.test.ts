import assert from 'node:assert/strict'
import { test } from 'node:test'
import { RolloutKeys } from '../src/rollout/keys.ts'
import { readDoc, rows, section, ticked } from './docs-tables.ts'

test('the Redis key table lists every key of src/rollout/keys.ts, and no key that does not exist', () => {
  const keys = new RolloutKeys('dbshift', 'N')
  const named = Object.values(keys).filter((value): value is string => typeof value === 'string' && value.startsWith('dbshift:'))
  const all = [...named, keys.handChange('<id>'), keys.traffic('<version>', '<slot>'), keys.routePercent('<name>')].sort()
  const documented = rows(section(readDoc('docs/redis-keys.md'), '## The keys')).flatMap((cells) => ticked(cells[0] as string)).sort()
  assert.deepEqual(documented, all)
})
