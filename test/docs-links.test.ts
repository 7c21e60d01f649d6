import assert from 'node:assert/strict'
import { existsSync, readdirSync } from 'node:fs'
import { dirname, join, normalize } from 'node:path'
import { test } from 'node:test'
import { readDoc, section } from './docs-tables.ts'

const pages = ['README.md', ...readdirSync('docs').filter((name) => name.endsWith('.md')).map((name) => join('docs', name))]

/** The page without its fenced code blocks, where a [x](y) is code, not a link. */
function prose (text: string): string {
  return text.replace(/^```[\s\S]*?^```/gm, '')
}

/** The anchors of a page's headings, as GitHub makes them (lower case, punctuation dropped, spaces to dashes). */
function anchors (text: string): Set<string> {
  const seen = new Map<string, number>()
  const found = new Set<string>()
  for (const match of prose(text).matchAll(/^#{1,6} (.+)$/gm)) {
    const slug = (match[1] as string).toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
    const n = seen.get(slug) ?? 0
    seen.set(slug, n + 1)
    found.add(n === 0 ? slug : `${slug}-${n}`)
  }
  return found
}

/** Every relative link of a page: [text](target) outside code, not http(s) or mailto. */
function links (text: string): string[] {
  return [...prose(text).matchAll(/\[[^\]]*\]\(([^)\s]+)\)/g)].map((match) => match[1] as string)
    .filter((target) => !/^[a-z]+:/.test(target))
}

test('every relative link of the README and docs/ points at a file that exists, and at a heading it has', () => {
  for (const page of pages) {
    for (const target of links(readDoc(page))) {
      const [path = '', anchor] = target.split('#')
      const file = path === '' ? page : normalize(join(dirname(page), path))
      assert.ok(existsSync(file), `${page} links to ${target}: ${file} does not exist`)
      if (anchor !== undefined && file.endsWith('.md')) {
        assert.ok(anchors(readDoc(file)).has(anchor), `${page} links to ${target}: ${file} has no heading #${anchor}`)
      }
    }
  }
})

test('every docs page is linked from the README\'s map of the docs', () => {
  const map = links(section(readDoc('README.md'), '## The docs')).map((target) => target.split('#')[0])
  const docs = pages.filter((page) => page !== 'README.md')
  assert.deepEqual([...new Set(map)].sort(), docs.sort())
})

test('every repository path the docs name in backticks exists', () => {
  for (const page of pages) {
    for (const match of readDoc(page).matchAll(/`((?:src|test|config|deploy|scripts|examples|bin|docs)\/[^`\s]*)`/g)) {
      const path = match[1] as string
      if (/[*<…]/.test(path)) continue // a pattern (test/prometheus/*.test.yml), not one file
      assert.ok(existsSync(path), `${page} names ${path}, which does not exist`)
    }
  }
})

test('every test the failure page names exists', () => {
  const page = readDoc('docs/failure-behaviour.md')
  const named = new Set([...page.matchAll(/^\|.*\| `([a-z0-9-]+)`(?::[^|]*)?(?:, `([a-z0-9-]+)`)* \|/gm)].flatMap((m) => [m[1], m[2]]).filter((n) => n !== undefined))
  assert.ok(named.size > 10, 'the failure page names no tests')
  for (const name of named) assert.ok(existsSync(`test/${name as string}.test.ts`), `the failure page names test ${name as string}, which does not exist`)
})
