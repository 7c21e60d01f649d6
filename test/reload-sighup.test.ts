import assert from 'node:assert/strict'
import { writeFileSync } from 'node:fs'
import { test } from 'node:test'
import { getAs, startProxyProcess, startRedis, startUpstream, type ProxyProcess } from './helpers.ts'
import { configFile } from './health-helpers.ts'

/** Resolves with the first log line of the process that satisfies `predicate`, now or as it is printed. */
async function logLine (proc: ProxyProcess, predicate: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
  const found = proc.logs.find(predicate)
  if (found !== undefined) return found
  return await new Promise((resolve) => {
    const onData = (): void => {
      setImmediate(() => { // the helper parses the chunk in its own listener first
        const line = proc.logs.find(predicate)
        if (line === undefined) return
        proc.child.stdout?.off('data', onData)
        resolve(line)
      })
    }
    proc.child.stdout?.on('data', onData)
  })
}

test('kill -HUP re-reads the file: the new pool takes the next request; a bad file is refused and the process keeps serving', async (t) => {
  const redis = await startRedis(t)
  const first = await startUpstream(t, 'first')
  const second = await startUpstream(t, 'second')
  const migrated = await startUpstream(t, 'migrated')
  const file = configFile(t, { pools: { legacy: [first.url], migrated: [migrated.url] } })
  const proc = await startProxyProcess(t, { DBSHIFT_CONFIG: file.path, REDIS_URL: redis.url })
  assert.equal((await getAs(proc.url, 'lee')).body.servedBy, 'first')

  writeFileSync(file.path, JSON.stringify({ pools: { legacy: [second.url], migrated: [migrated.url] } }))
  process.kill(proc.pid, 'SIGHUP')
  const reloaded = await logLine(proc, (line) => String(line.msg).startsWith('configuration reloaded'))
  assert.deepEqual(reloaded.changed, ['pools.legacy.members'])
  assert.equal((await getAs(proc.url, 'lee')).body.servedBy, 'second')

  writeFileSync(file.path, 'pools: [unclosed')
  process.kill(proc.pid, 'SIGHUP')
  const refused = await logLine(proc, (line) => String(line.msg).startsWith('reload refused'))
  assert.match(String(refused.msg), /not valid YAML/)
  assert.equal((await getAs(proc.url, 'lee')).body.servedBy, 'second')
  assert.equal(proc.child.exitCode, null, 'still running')
})
