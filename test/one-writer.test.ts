import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { relative } from 'node:path'
import { test } from 'node:test'
import { sourceFiles } from './source-files.ts'

/** A Redis command that writes, sent on a client (`redis.…`, `this.#redis.…`, `ctx.redis.…`). */
const WRITE = /\b(?:redis|#redis|client|node)\.(set|setex|del|unlink|hset|hdel|sadd|srem|xadd|publish|eval|evalsha|multi|pipeline|expire|pexpire|incr|incrby|hincrby|defineCommand)\(/g

test('rollout state is written only by the command layer (src/control/) and its scripts', () => {
  const writers: string[] = []
  for (const file of sourceFiles('src')) {
    const name = relative('src', file)
    if (name.startsWith('control/')) continue
    for (const match of readFileSync(file, 'utf8').matchAll(WRITE)) {
      // A pipeline of reads is no write.
      if (match[1] === 'pipeline' && name === 'rollout/store.ts') continue
      writers.push(`${name}: ${match[0]}`)
    }
  }
  assert.deepEqual(writers, [])
})
