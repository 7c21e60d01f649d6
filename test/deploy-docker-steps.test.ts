import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { request, type IncomingMessage, type ServerResponse } from 'node:http'
import { text } from 'node:stream/consumers'
import { freePort, startRedis, startUpstream } from './helpers.ts'

// No Docker engine runs here: scripts/docker-steps.sh follows the Dockerfile's steps on the host (npm ci, build,
// prune to production dependencies, the final stage's ENV and CMD, the HEALTHCHECK, the STOPSIGNAL).
const SCRIPT = fileURLToPath(new URL('../scripts/docker-steps.sh', import.meta.url))

test('the image built by the Dockerfile\'s steps becomes healthy, serves, and drains an in-flight request on SIGTERM', { timeout: 120_000 }, async (t) => {
  const redis = await startRedis(t)
  let held: ServerResponse | undefined
  let arrived: () => void = () => {}
  const requestArrived = new Promise<void>((resolve) => { arrived = resolve })
  const legacy = await startUpstream(t, 'legacy', (req, res) => {
    req.resume()
    held = res
    arrived()
  })
  const migrated = await startUpstream(t, 'migrated')
  const [proxyPort, adminPort] = [await freePort(), await freePort()]

  const env = {
    DBSHIFT_LISTEN: `127.0.0.1:${proxyPort}`,
    DBSHIFT_ADMIN_LISTEN: `127.0.0.1:${adminPort}`,
    REDIS_URL: redis.url,
    DBSHIFT_LEGACY: legacy.url,
    DBSHIFT_MIGRATED: migrated.url
  }
  const args = [SCRIPT, '--wait', '--exec', 'dbshift set 20 --reason "from the image" && dbshift which alice', ...Object.entries(env).flatMap(([name, value]) => ['-e', `${name}=${value}`])]
  const script = spawn('bash', args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let output = ''
  script.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = once(script, 'exit') as Promise<[number | null, string | null]>
  t.after(async () => {
    if (script.exitCode !== null || script.signalCode !== null) return
    process.kill(-(script.pid as number), 'SIGTERM') // the script and the process it started; the script cleans up
    await exited
  })

  const pid = await new Promise<number>((resolve, reject) => {
    script.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      const ready = /^ready (\d+)$/m.exec(output)
      if (ready !== null) resolve(Number(ready[1]))
    })
    script.once('exit', (code) => reject(new Error(`docker-steps.sh exited with ${String(code)} before the process was healthy:\n${output}`)))
  })
  assert.match(output, /no dev dependencies in the final image/)
  assert.match(output, /user node, ports 8080 9901, stop signal SIGTERM/)
  // The dbshift command is on the image's PATH and reads the same configuration as the proxy.
  assert.equal(await redis.client.get('dbshift:{default}:percent'), '20')
  assert.match(output, /alice[^\n]*migrated/)

  // The admin port answers what the probes and Prometheus ask for.
  const admin = `http://127.0.0.1:${adminPort}`
  assert.equal((await fetch(`${admin}/healthz`)).status, 200)
  assert.match(await (await fetch(`${admin}/metrics`)).text(), /^dbshift_rollout_percent /m)

  // A request is in flight on the legacy pool when the container is stopped; it still completes.
  const inFlight = request(`http://127.0.0.1:${proxyPort}/orders`, { agent: false, headers: { 'x-user-id': 'bob' } })
  inFlight.end()
  const [[res]] = await Promise.all([once(inFlight, 'response') as Promise<[IncomingMessage]>, requestArrived.then(() => {
    process.kill(pid, 'SIGTERM')
    held?.end('drained')
  })])
  assert.equal(res.statusCode, 200)
  assert.equal(res.headers['x-dbshift-version'], 'legacy')
  assert.equal((await text(res)), 'drained')

  const [code] = await exited
  assert.equal(code, 0, output)
  assert.match(output, /exited with status 0/)
})
