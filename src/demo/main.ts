import { randomBytes } from 'node:crypto'
import { startDemoPool } from './pool.ts'
import { main } from '../main.ts'

// `npm run demo`: two built-in pools and dbshift in front of them, on the default config.
const legacy = await startDemoPool('legacy')
const migrated = await startDemoPool('migrated')
process.env.DBSHIFT_LEGACY = legacy.url
process.env.DBSHIFT_MIGRATED = migrated.url
process.env.DBSHIFT_ADMIN_TOKEN ??= randomBytes(16).toString('hex') // a fresh one each run: placeholders are refused

const { app, proxy, admin } = await main((config) => {
  if (process.env.DBSHIFT_CONFIG === undefined) config.rollout.initialPercent = 20
})

const proxyUrl = `http://127.0.0.1:${proxy.port}`
const adminUrl = `http://${admin.address}:${admin.port}`
const redis = app.sync.lastSyncAt === 0
  ? `Redis at ${app.config.redis.url} is not reachable: serving the initial ${app.sync.current.percent}% (start Redis to turn the dial live)`
  : `Redis at ${app.config.redis.url} says ${app.sync.current.percent}% (${app.sync.current.state})`
process.stdout.write(`
  dbshift demo: proxy ${proxyUrl}, admin ${adminUrl}
  legacy pool ${legacy.url}, migrated pool ${migrated.url}
  ${redis}. Try:

    curl -s -H 'X-User-ID: alice' ${proxyUrl}/orders
    for u in $(seq 1 20); do curl -s -H "X-User-ID: user-$u" ${proxyUrl}/ ; echo; done
    redis-cli SET '${app.store.keys.percent}' 50         # turn the dial; every instance follows within 1 s
    npx dbshift which alice                                # which version, which bucket, and why
    curl -s ${adminUrl}/status                    # status, metrics, health
    curl -s -X POST -H 'Authorization: Bearer ${process.env.DBSHIFT_ADMIN_TOKEN ?? ''}' ${adminUrl}/rollback

`)
