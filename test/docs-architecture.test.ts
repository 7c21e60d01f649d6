import assert from 'node:assert/strict'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'node:test'
import { readDoc, section } from './docs-tables.ts'

const page = readDoc('docs/architecture.md')

/** The lines of the code block under "## Layout". */
function layout (): string[] {
  const block = /```\n([\s\S]*?)```/.exec(section(page, '## Layout'))
  assert.ok(block !== null, 'the Layout section has no code block')
  return (block[1] as string).split('\n').filter((line) => line.trim() !== '')
}

test('the layout names every file and folder of src/, and each one it names exists', () => {
  const lines = layout()
  const entries: string[] = []
  let folder = ''
  for (const line of lines) {
    if (!line.startsWith('  ')) { // a top-level path of the repository: src/, test/, test/bench/, config/, …
      const path = line.split(/\s+/)[0] as string
      assert.ok(existsSync(path), `${path} is in the layout but does not exist`)
      continue
    }
    const own = /^ {2}(\S+)/.exec(line)
    if (own !== null && !line.startsWith('   ')) {
      const name = own[1] as string
      entries.push(name)
      folder = name.endsWith('/') ? name : ''
    }
    // Every file a description names lives in the folder of its entry (or in src/ for a top-level file).
    for (const file of line.matchAll(/\b([a-z][a-z0-9-]*\.ts)\b/g)) {
      const path = join('src', folder, file[1] as string)
      assert.ok(existsSync(path), `the layout names ${path}, which does not exist`)
    }
  }
  const actual = readdirSync('src').map((name) => statSync(join('src', name)).isDirectory() ? `${name}/` : name)
  assert.deepEqual(entries.sort(), actual.sort())
})

test('every source file the architecture page names exists', () => {
  const prose = page.slice(0, page.indexOf('## Layout'))
  for (const match of prose.matchAll(/`((?:[a-z-]+\/)*[a-z][a-z0-9-]*\.ts)`/g)) {
    const path = match[1] as string
    const resolved = path.startsWith('test/') ? path : join('src', path)
    assert.ok(existsSync(resolved), `the architecture page names ${path}, which does not exist`)
  }
})
