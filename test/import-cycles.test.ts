import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { dirname, relative, resolve } from 'node:path'
import { test } from 'node:test'
import ts from 'typescript'
import { sourceFiles } from './source-files.ts'

/** The relative imports of a file, type-only ones and re-exports included (TypeScript's own pre-parser). */
function imports (file: string): string[] {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true)
  return info.importedFiles.map((ref) => ref.fileName).filter((name) => name.startsWith('.')).map((name) => resolve(dirname(file), name))
}

test('src/ has no import cycle, not even a type-only one', () => {
  const root = resolve('src')
  const graph = new Map(sourceFiles(root).map((file) => [file, imports(file)]))
  const cycles: string[] = []
  const state = new Map<string, 'open' | 'done'>()
  const path: string[] = []
  const visit = (file: string): void => {
    state.set(file, 'open')
    path.push(file)
    for (const next of graph.get(file) ?? []) {
      if (state.get(next) === 'open') cycles.push([...path.slice(path.indexOf(next)), next].map((f) => relative(root, f)).join(' → '))
      else if (state.get(next) === undefined && graph.has(next)) visit(next)
    }
    path.pop()
    state.set(file, 'done')
  }
  for (const file of graph.keys()) if (state.get(file) === undefined) visit(file)
  assert.deepEqual(cycles, [])
})
