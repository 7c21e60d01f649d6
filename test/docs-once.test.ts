import assert from 'node:assert/strict'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { ERROR_CODES } from '../src/errors.ts'
import { readDoc, rows, ticked } from './docs-tables.ts'

const pages = ['README.md', ...readdirSync('docs').filter((name) => name.endsWith('.md')).map((name) => join('docs', name))]

test('every error code, metric, Redis key and environment variable has one table row in all the docs', () => {
  const rowsOf = new Map<string, string[]>()
  for (const page of pages) {
    for (const cells of rows(readDoc(page))) {
      for (const token of ticked(cells[0] as string)) rowsOf.set(token, [...rowsOf.get(token) ?? [], page])
    }
  }
  const defined = [...rowsOf.keys()].filter((token) =>
    (ERROR_CODES as readonly string[]).includes(token) || /^dbshift_[a-z_]+$/.test(token) || token.startsWith('dbshift:{N}:') ||
    /^(DBSHIFT|REDIS)_[A-Z_]+$/.test(token))
  assert.ok(defined.length > 40, 'the docs define almost nothing')
  for (const token of defined) assert.equal(rowsOf.get(token)?.length, 1, `${token} has a row in ${String(rowsOf.get(token)?.join(', '))}`)
})
