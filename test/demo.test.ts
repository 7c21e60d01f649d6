import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { test } from 'node:test'
import { freePort, getAs, startRedis } from './helpers.ts'

async function startDemo (t: Parameters<typeof startRedis>[0], redisUrl: string): Promise<{ proxyUrl: string, output: () => string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/demo/main.ts'], {
    env: { PATH: process.env.PATH, REDIS_URL: redisUrl, DBSHIFT_LISTEN: '127.0.0.1:0', DBSHIFT_ADMIN_LISTEN: '127.0.0.1:0' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.after(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM')
      await once(child, 'exit')
    }
  })
  let out = ''
  const proxyUrl = await new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      const match = /dbshift demo: proxy (http:\/\/\S+),/.exec(out)
      if (match !== null) resolve(match[1] as string)
    })
    child.once('exit', (code) => reject(new Error(`the demo exited with ${String(code)}: ${out}`)))
  })
  return { proxyUrl, output: () => out }
}

test('the demo serves both versions with nothing else running (Redis unreachable)', async (t) => {
  const demo = await startDemo(t, `redis://127.0.0.1:${await freePort()}`)
  assert.match(demo.output(), /is not reachable: serving the initial 20%/)
  const seen = new Set<string>()
  for (let i = 0; i < 40; i++) {
    const answer = await getAs(demo.proxyUrl, `user-${i}`)
    assert.equal(answer.body.servedBy, answer.version)
    seen.add(String(answer.version))
  }
  assert.deepEqual([...seen].sort(), ['legacy', 'migrated'])
})

test('the demo follows the dial in Redis', async (t) => {
  const redis = await startRedis(t)
  await redis.client.set('dbshift:{default}:percent', '100')
  const demo = await startDemo(t, redis.url)
  assert.match(demo.output(), /says 100% \(active\)/)
  assert.equal((await getAs(demo.proxyUrl, 'bob')).body.servedBy, 'migrated')
})
