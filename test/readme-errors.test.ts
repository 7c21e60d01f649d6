import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import { ERROR_CODES } from '../src/errors.ts'

test('the README error table lists every error code, and no code that does not exist', () => {
  const readme = readFileSync('README.md', 'utf8')
  const section = readme.slice(readme.indexOf('## Error codes'), readme.indexOf('\n## ', readme.indexOf('## Error codes') + 1))
  const documented = [...section.matchAll(/^\| `(DBSHIFT_ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]).sort()
  assert.deepEqual(documented, [...ERROR_CODES].sort())
})
