import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import fc from 'fast-check'
import { ConfigSchema, loadConfig, resolveConfig, type Config } from '../src/config.ts'

const POOLS = { legacy: ['http://127.0.0.1:1'], migrated: ['http://127.0.0.1:2'] }

/** Either a valid configuration, or a ConfigError whose one-line message starts with a key; nothing else. */
function outcome (file: unknown, env: NodeJS.ProcessEnv = {}): { config?: Config, message?: string } {
  try {
    return { config: resolveConfig(file, env) }
  } catch (err) {
    assert.equal((err as { code?: string }).code, 'DBSHIFT_ERR_CONFIG', `not a ConfigError: ${String(err)}`)
    const message = (err as Error).message
    assert.doesNotMatch(message, /\n/, 'one line')
    return { message }
  }
}

/** Every dotted key of the schema, with the schema of its value. */
function leaves (schema: { properties?: Record<string, unknown> }, prefix = ''): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = []
  for (const [name, child] of Object.entries(schema.properties ?? {})) {
    const key = prefix === '' ? name : `${prefix}.${name}`
    const nested = child as { type?: string, properties?: Record<string, unknown> }
    if (nested.type === 'object' && nested.properties !== undefined) out.push(...leaves(nested, key))
    else out.push([key, child])
  }
  return out
}

function setPath (target: Record<string, unknown>, dotted: string, value: unknown): void {
  const parts = dotted.split('.')
  let node = target
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== 'object' || node[part] === null) node[part] = {}
    node = node[part] as Record<string, unknown>
  }
  node[parts[parts.length - 1] as string] = value
}

const KEYS = leaves(ConfigSchema as unknown as { properties: Record<string, unknown> }).map(([key]) => key)

test('property: any JSON document as the config file is accepted or refused with a ConfigError, never a crash', () => {
  fc.assert(fc.property(fc.jsonValue({ maxDepth: 4 }), (file) => { outcome(file) }), { numRuns: 500 })
  fc.assert(fc.property(fc.anything({ maxDepth: 3 }), (file) => { outcome(file) }), { numRuns: 300 })
})

test('property: one key of a valid config set to any value is accepted, or refused with a message naming that key', () => {
  const value = fc.oneof(
    fc.jsonValue({ maxDepth: 2 }),
    fc.integer({ min: -1e9, max: 1e9 }),
    fc.double(),
    fc.string({ maxLength: 80 }),
    fc.constantFrom('', ' ', '0', '-1', '1e309', 'NaN', '127.0.0.1:99999', '[::1]:8080', 'redis://', 'ftp://x', '__proto__')
  )
  fc.assert(fc.property(fc.constantFrom(...KEYS), value, (key, v) => {
    const file: Record<string, unknown> = { pools: structuredClone(POOLS) }
    setPath(file, key, v)
    const { config, message } = outcome(file)
    if (message !== undefined) {
      const top = key.split('.')[0] as string
      assert.ok(message.includes(top), `"${message}" names ${key}`)
    } else {
      assert.ok(config !== undefined)
      // An accepted config is usable: host:port values split, pools have members.
      assert.ok(config.pools.legacy.members.length > 0 && config.pools.migrated.members.length > 0)
    }
  }), { numRuns: 1_000 })
})

test('property: any environment value for the documented variables is accepted or refused naming the variable', () => {
  const variables = ['DBSHIFT_LISTEN', 'DBSHIFT_ADMIN_LISTEN', 'DBSHIFT_LEGACY', 'DBSHIFT_MIGRATED', 'DBSHIFT_ROLLOUT', 'REDIS_URL', 'DBSHIFT_ADMIN_TOKEN']
  fc.assert(fc.property(fc.constantFrom(...variables), fc.string({ maxLength: 120 }), (variable, value) => {
    const { message } = outcome({ pools: POOLS }, { [variable]: value })
    if (message !== undefined) assert.ok(message.includes(variable), `"${message}" names ${variable}`)
  }), { numRuns: 500 })
})

test('property: any text as the YAML file is accepted or refused with one line, never a crash', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-fuzz-config-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'dbshift.yaml')
  const yamlish = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.array(fc.constantFrom('pools:', '  legacy:', '  - http://a:1', 'server: {', '&a [*a]', '!!binary x', '? ', '---', '"', 'listen: 0.0.0.0:1', '\t', '%YAML 9'), { maxLength: 8 }).map((lines) => lines.join('\n'))
  )
  fc.assert(fc.property(yamlish, (text) => {
    writeFileSync(file, text)
    try {
      loadConfig({ DBSHIFT_CONFIG: file, DBSHIFT_LEGACY: 'http://127.0.0.1:1', DBSHIFT_MIGRATED: 'http://127.0.0.1:2' })
    } catch (err) {
      assert.equal((err as { code?: string }).code, 'DBSHIFT_ERR_CONFIG', `not a ConfigError: ${String(err)}`)
      assert.doesNotMatch((err as Error).message, /\n/)
    }
  }), { numRuns: 300 })
})
