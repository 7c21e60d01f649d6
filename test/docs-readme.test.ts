import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'
import murmurhash3 from 'murmurhash3js-revisited'
import { tailBucket } from '../src/routing/bucket.ts'
import { Router, type RoutingState } from '../src/routing/decide.ts'
import { toByteString } from '../src/routing/user-key.ts'
import { readDoc, rows, section, ticked } from './docs-tables.ts'

const readme = readDoc('README.md')
const at = (percent: number): RoutingState => ({ percent, rolledBack: false, allow: new Set(), deny: new Set() })

test('the README\'s bucket test vectors are what the router computes', () => {
  const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })
  const vectors = rows(section(readme, '## The bucket formula'))
  assert.ok(vectors.length >= 6, 'the README has no test vectors')
  for (const [keyCell, hash, bucket, at10, at20] of vectors) {
    const key = ticked(keyCell as string)[0] as string
    assert.equal(murmurhash3.x86.hash32(Buffer.from(`default:${key}`, 'utf8'), 0), Number(hash), key)
    assert.equal(router.bucketOf(toByteString(key)), Number(bucket), key)
    assert.equal(router.decide(at(10), toByteString(key)).version === 'migrated' ? 'yes' : 'no', at10, `${key} at 10%`)
    assert.equal(router.decide(at(20), toByteString(key)).version === 'migrated' ? 'yes' : 'no', at20, `${key} at 20%`)
  }
  const salted = /With salt `([^`]+)`, `([^`]+)` is in bucket (\d+)/.exec(readme)
  assert.ok(salted !== null, 'the README has no salted example')
  const [, salt, key, bucket] = salted as unknown as [string, string, string, string]
  assert.equal(new Router({ strategy: 'hash', salt, anonymous: 'legacy' }).bucketOf(toByteString(key)), Number(bucket))
})

test('the routing page\'s tail examples are what the tail strategy computes', () => {
  const examples = [...section(readDoc('docs/routing.md'), '## The tail strategy').matchAll(/`(\d+)` → (\d+)/g)]
  assert.ok(examples.length >= 3, 'the routing page has no tail examples')
  for (const [, key, bucket] of examples) assert.equal(tailBucket(key as string), Number(bucket), key)
})

test('the README\'s test command is the one .ci/run runs', () => {
  const ci = readFileSync('.ci/run', 'utf8').trim().split('\n')
  const command = (ci[ci.length - 1] as string).trim()
  const block = /```sh\n([\s\S]*?)```/.exec(section(readme, '## Two commands'))
  assert.ok(block !== null, 'the README has no two commands')
  const lines = (block[1] as string).trim().split('\n').map((line) => line.replace(/\s+#.*$/, '').trim())
  assert.equal(lines.length, 2)
  assert.equal(lines[1], command)
})
