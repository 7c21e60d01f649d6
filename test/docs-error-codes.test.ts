import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ERROR_CODES } from '../src/errors.ts'
import { firstCells, readDoc } from './docs-tables.ts'

test('the error code table lists every error code, and no code that does not exist', () => {
  const documented = firstCells(readDoc('docs/error-codes.md')).filter((cell) => /^DBSHIFT_ERR_[A-Z_]+$/.test(cell)).sort()
  assert.deepEqual(documented, [...ERROR_CODES].sort())
})
