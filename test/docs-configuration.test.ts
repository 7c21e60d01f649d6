import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ConfigSchema, DEFAULT_CONFIG_PATH, ENV_KEYS } from '../src/config.ts'
import { readDoc, rows, section, ticked } from './docs-tables.ts'

interface Node { type?: string, properties?: Record<string, Node>, default?: unknown }

/** Every leaf key of the schema (dotted), with its default where the schema has one. */
function leaves (node: Node, prefix = ''): Map<string, unknown> {
  const found = new Map<string, unknown>()
  for (const [name, child] of Object.entries(node.properties ?? {})) {
    const key = prefix === '' ? name : `${prefix}.${name}`
    if (child.type === 'object' && child.properties !== undefined) for (const [k, v] of leaves(child, key)) found.set(k, v)
    else found.set(key, child.default)
  }
  return found
}

/** The keys a first cell names: `guards.l1.windowMs`, `.errorRate` is two keys of guards.l1. */
function keysOf (cell: string): string[] {
  let parent = ''
  return ticked(cell).map((token) => {
    const key = token.startsWith('.') ? `${parent}${token}` : token
    parent = key.slice(0, key.lastIndexOf('.'))
    return key
  })
}

/** The items of a default cell: `300000`, `0.05`, `100` or —, `5000` (a backticked item may hold commas). */
function itemsOf (cell: string): string[] {
  return [...cell.matchAll(/`[^`]*`|[^,`]+/g)].map((match) => match[0].trim()).filter((item) => item !== '')
}

const show = (value: unknown): string => Array.isArray(value) ? `[${value.join(', ')}]` : String(value)

const page = readDoc('docs/configuration.md')
const schema = leaves(ConfigSchema as unknown as Node)
const keyRows = [...rows(section(page, '## Every key of the file')), ...rows(section(page, '## Guard keys'))]

test('the configuration reference has one row for every key of the schema, and no key that does not exist', () => {
  const documented = keyRows.flatMap((cells) => keysOf(cells[0] as string)).sort()
  assert.deepEqual(documented, [...schema.keys()].sort())
})

test('every default in the configuration reference is the schema\'s default', () => {
  for (const cells of keyRows) {
    const keys = keysOf(cells[0] as string)
    const items = itemsOf(cells[1] as string)
    if (items.length !== keys.length) {
      // One descriptive cell for several keys ("— (required)"): none of them may have a default to show.
      for (const key of keys) assert.equal(schema.get(key), undefined, `${key}: the default cell "${cells[1] as string}" does not show its default`)
      continue
    }
    keys.forEach((key, i) => {
      const expected = schema.get(key)
      if (expected !== undefined) assert.equal(items[i], `\`${show(expected)}\``, key)
    })
  }
})

test('the environment table names every variable, the key it overrides and that key\'s default', () => {
  const envRows = rows(section(page, '## Environment variables'))
  const documented = envRows.map((cells) => ticked(cells[0] as string)[0]).sort()
  assert.deepEqual(documented, ['DBSHIFT_CONFIG', ...Object.keys(ENV_KEYS)].sort())
  for (const cells of envRows) {
    const variable = ticked(cells[0] as string)[0] as string
    if (variable === 'DBSHIFT_CONFIG') {
      assert.equal(cells[2], `\`${DEFAULT_CONFIG_PATH}\``)
      continue
    }
    const key = ENV_KEYS[variable as keyof typeof ENV_KEYS]
    assert.equal(ticked(cells[1] as string)[0], key, variable)
    const expected = schema.get(key)
    if (expected !== undefined) assert.equal(cells[2], `\`${show(expected)}\``, variable)
  }
})
