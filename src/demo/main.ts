import { startDemoPool } from './pool.ts'
import { main } from '../main.ts'

// `npm run demo`: two built-in pools and dbshift in front of them, on the default config.
const legacy = await startDemoPool('legacy')
const migrated = await startDemoPool('migrated')
process.env.DBSHIFT_LEGACY = legacy.url
process.env.DBSHIFT_MIGRATED = migrated.url
process.env.DBSHIFT_ADMIN_TOKEN ??= 'demo-token-change-me-0123456789'

await main((config) => {
  if (process.env.DBSHIFT_CONFIG === undefined) config.rollout.initialPercent = 20
})

const rollout = process.env.DBSHIFT_ROLLOUT ?? 'default'
process.stdout.write(`
  dbshift demo: legacy pool ${legacy.url}, migrated pool ${migrated.url}
  Users start at 20% migrated (or whatever Redis says). Try:

    curl -s -H 'X-User-ID: alice' http://127.0.0.1:8080/orders
    for u in $(seq 1 20); do curl -s -H "X-User-ID: user-$u" http://127.0.0.1:8080/ ; echo; done
    redis-cli SET 'dbshift:{${rollout}}:percent' 50         # turn the dial; every instance follows within 1 s
    npx dbshift which alice                          # which version, which bucket, and why
    curl -s http://127.0.0.1:9901/status             # the admin port: status, metrics, health
    curl -s -X POST -H 'Authorization: Bearer ${process.env.DBSHIFT_ADMIN_TOKEN}' http://127.0.0.1:9901/rollback

`)
