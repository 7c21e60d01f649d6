import assert from 'node:assert/strict'
import { test } from 'node:test'
import { EXIT } from '../src/cli/main.ts'
import { firstCells, readDoc, section } from './docs-tables.ts'

test('the exit status table lists every exit status of the dbshift command, and no other', () => {
  const documented = firstCells(section(readDoc('docs/command-line.md'), '## Exit status')).map(Number).sort()
  assert.deepEqual(documented, Object.values(EXIT).sort())
})
