import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { setTimeout as delay } from 'node:timers/promises'
import { join } from 'node:path'
import { test } from 'node:test'
import { getAs, tempDir, startProxy, startRedis, startUpstream, testConfig, untilRollout } from './helpers.ts'
import { openConsole, SCREENSHOTS, screenshot, startBrowser, untilPolled } from './console-browser.ts'

const TOKEN = 'console-admin-token-0123456789'

/** Runs the dbshift command as a real process against the test's Redis. */
async function dbshift (env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number | null, stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve))
  return { code, stderr }
}

test('the operator console: what it shows, live, and what it does with and without the token', async (t) => {
  const redis = await startRedis(t)
  await redis.client.flushall()
  const legacy = await startUpstream(t, 'legacy')
  const migrated = await startUpstream(t, 'migrated', (req, res) => {
    res.writeHead(req.url === '/fail' ? 500 : 200, { 'content-type': 'application/json' })
    res.end('{}')
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, { rollout: { name: 'shop' }, admin: { token: TOKEN } }))
  await redis.client.set('dbshift:{shop}:percent', '30')
  await untilRollout(proxy.app, (s) => s.percent === 30)
  const users = Array.from({ length: 40 }, (_, i) => `user-${i}`)
  for (const user of users) await getAs(proxy.url, user)
  await getAs(proxy.url, 'user-1', '/fail')
  // Another instance that applies an older percentage: the fleet view flags it.
  const now = Date.now()
  await redis.client.hset(proxy.app.store.keys.instances, 'edge-ghost', JSON.stringify({
    id: 'edge-ghost', percent: 5, state: 'active', lastSyncAt: now, rollbackPending: false, traffic: { legacy: { rps: 1, errorRate: 0 }, migrated: { rps: 0, errorRate: 0 } }, at: now, expiresAt: now + 600_000
  }))
  await proxy.app.heartbeat.beat()

  const browser = await startBrowser(t)
  const admin = new URL(proxy.adminUrl)
  const watched = await openConsole(browser, `${proxy.adminUrl}/`)
  const { page } = watched
  await untilPolled(page)

  await t.test('loads with no script error, shows the dials, both versions\' rates, each guard\'s sentence and the fleet', async () => {
    await page.waitForSelector('[data-dial="percent"] dd')
    assert.equal(await page.textContent('[data-dial="percent"] dd'), '30%')
    assert.equal(await page.textContent('[data-dial="state"] dd'), 'active')
    assert.match(await page.textContent('.rate[data-version="legacy"]') ?? '', /req\/s.*errors/)
    assert.match(await page.textContent('.rate[data-version="migrated"]') ?? '', /req\/s.*errors/)
    for (const level of ['L1', 'L2', 'L3']) {
      const sentence = await page.textContent(`[data-level="${level}"] .sentence`)
      assert.ok(sentence !== null && sentence.length > 10, `${level}: ${sentence ?? ''}`)
    }
    assert.match(await page.textContent('[data-level="L3"] .sentence') ?? '', /disabled/)
    assert.match(await page.textContent('[data-level="L2"] .sentence') ?? '', /no load reading.*no action/)
    await page.waitForSelector(`#fleet-table tr[data-instance="${proxy.app.instanceId}"]`)
    await page.waitForSelector('#fleet-table tr.lagging[data-instance="edge-ghost"]')
    assert.match(await page.textContent('#fleet-table tr.lagging[data-instance="edge-ghost"]') ?? '', /lagging: applies 5%, Redis has 30%/)
    assert.match(await page.textContent('#pool-list') ?? '', new RegExp(new URL(migrated.url).host))
    // The three charts are drawn, by the vendored uPlot.
    await page.waitForFunction(() => document.querySelectorAll('.chart canvas').length === 3)
    assert.deepEqual(watched.errors, [])
    const outside = watched.requests.filter((url) => !url.startsWith('data:') && new URL(url).host !== admin.host)
    assert.deepEqual(outside, [])
  })

  await t.test('L1 explains its decision from the fleet\'s counts once it has judged migrated traffic', async () => {
    await page.waitForFunction(() => /migrated .* no action/.test(document.querySelector('[data-level="L1"] .sentence')?.textContent ?? ''))
    assert.match(await page.textContent('[data-level="L1"] .facts') ?? '', /> 5% over 5 min.*100 requests/)
  })

  await t.test('a change made with the dbshift command, or a plain SET in Redis, appears without a reload', async () => {
    const config = join(tempDir(t, 'dbshift-console-'), 'dbshift.yaml')
    writeFileSync(config, 'rollout:\n  name: shop\n')
    const run = await dbshift({ REDIS_URL: redis.url, DBSHIFT_CONFIG: config, DBSHIFT_OPERATOR: 'carol' }, 'set', '40', '--reason', 'bake went well')
    assert.equal(run.code, 0, run.stderr)
    await page.waitForFunction(() => document.querySelector('[data-dial="percent"] dd')?.textContent === '40%')
    await page.waitForFunction(() => /carol.*bake went well/.test(document.querySelector('#last-change')?.textContent ?? ''))
    await page.waitForSelector('#audit-table tr[data-action="set_percent"]')
    await redis.client.set('dbshift:{shop}:percent', '45')
    await page.waitForFunction(() => document.querySelector('[data-dial="percent"] dd')?.textContent === '45%')
    // A freeze (as the L2 guard writes it) shows with its reason, and goes when it is lifted.
    await redis.client.set('dbshift:{shop}:freeze', 'database load 0.93 > 0.8 for 3 min')
    await page.waitForFunction(() => /frozen: database load 0.93/.test(document.querySelector('[data-dial="freeze"] dd')?.textContent ?? ''))
    await redis.client.del('dbshift:{shop}:freeze')
    await page.waitForFunction(() => document.querySelector('[data-dial="freeze"] dd')?.textContent === 'not frozen')
  })

  await t.test('the audit trail filters by text and by action', async () => {
    await page.fill('#audit-filter', 'bake went')
    await page.waitForFunction(() => document.querySelectorAll('#audit-table tbody tr').length === 1)
    await page.fill('#audit-filter', '')
    await page.selectOption('#audit-action', 'set_percent')
    const actions = await page.$$eval('#audit-table tbody tr', (rows) => rows.map((row) => (row as HTMLElement).dataset.action))
    assert.ok(actions.length > 0 && actions.every((action) => action === 'set_percent'), JSON.stringify(actions))
    await page.selectOption('#audit-action', '')
  })

  await t.test('a rollback from the page without the token is refused with the message shown; with the token it works', async () => {
    // Every action asks for its reason first; cancelling sends nothing.
    await page.click('#rollback')
    await page.waitForSelector('#reason-dialog[open]')
    await page.click('#reason-cancel')
    await page.waitForSelector('#result[data-code="cancelled"]')
    await page.click('#rollback')
    await page.fill('#reason-input', 'checkout looks wrong')
    await page.click('#reason-ok')
    await page.waitForSelector('#result[data-code="DBSHIFT_ERR_UNAUTHORIZED"]')
    assert.match(await page.textContent('#result') ?? '', /refused \(401 DBSHIFT_ERR_UNAUTHORIZED\): a valid "Authorization: Bearer <token>" header is required/)
    assert.equal(await redis.client.get('dbshift:{shop}:state'), null)

    await page.fill('#token-input', TOKEN)
    await page.click('#token-use')
    await page.waitForFunction(() => document.querySelector('#token-state')?.textContent === 'token set')
    assert.equal(await page.evaluate(() => sessionStorage.getItem('dbshift.token')), TOKEN)
    await page.click('#rollback')
    await page.fill('#reason-input', 'checkout looks wrong')
    await page.click('#reason-ok')
    await page.waitForSelector('#result[data-code="ok"]')
    assert.match(await page.textContent('#result') ?? '', /Roll back: rolled back fleet-wide/)
    assert.equal(await redis.client.get('dbshift:{shop}:state'), 'rolled_back')
    assert.equal(await redis.client.hget('dbshift:{shop}:trip', 'reason'), 'checkout looks wrong')
    await page.waitForFunction(() => document.querySelector('[data-dial="state"] dd')?.textContent === 'rolled_back')
    await page.waitForFunction(() => /rolled back/.test(document.querySelector('[data-level="L1"] .sentence')?.textContent ?? ''))

    // A refusal of the API itself shows its code too: a ramp cannot start while rolled back.
    await page.fill('#ramp-steps', '50, 100')
    await page.click('#ramp-form button[type="submit"]')
    await page.fill('#reason-input', 'continue the ramp')
    await page.click('#reason-ok')
    await page.waitForSelector('#result[data-code="DBSHIFT_ERR_CONFLICT"]')

    await page.click('#resume')
    await page.fill('#reason-input', 'fixed the checkout query')
    await page.click('#reason-ok')
    await page.waitForSelector('#result[data-code="ok"]')
    await page.waitForFunction(() => document.querySelector('[data-dial="state"] dd')?.textContent === 'active')
  })

  await t.test('the ramp, the dial and the override sets from the page, each with a reason', async () => {
    await page.fill('#dial-percent', '10')
    await page.click('#dial-form button[type="submit"]')
    await page.fill('#reason-input', 'start over')
    await page.click('#reason-ok')
    await page.waitForFunction(() => document.querySelector('[data-dial="percent"] dd')?.textContent === '10%')

    await page.fill('#ramp-steps', '20, 50')
    await page.fill('#ramp-bake', '1h')
    await page.click('#ramp-form button[type="submit"]')
    await page.fill('#reason-input', 'ramp')
    await page.click('#reason-ok')
    await page.waitForSelector('#result[data-code="ok"]')
    await page.waitForFunction(() => /step 1 of 2|waiting/.test(document.querySelector('#ramp-progress')?.textContent ?? ''))
    await page.waitForFunction(() => document.querySelectorAll('#ramp-steps-list li').length === 2)
    await page.click('[data-ramp="pause"]')
    await page.fill('#reason-input', 'hold on')
    await page.click('#reason-ok')
    await page.waitForFunction(() => /paused/.test(document.querySelector('#ramp-progress')?.textContent ?? ''))

    await page.fill('#member-user', 'qa-anna')
    await page.selectOption('#member-set', 'allow')
    await page.click('#member-form button[type="submit"]')
    await page.fill('#reason-input', 'internal tester')
    await page.click('#reason-ok')
    await page.waitForSelector('#result[data-code="ok"]')
    assert.equal(await redis.client.sismember('dbshift:{shop}:allow', 'qa-anna'), 1)
    await untilRollout(proxy.app, (s) => s.allow.has('qa-anna'))
    await page.click('#member-remove')
    await page.fill('#reason-input', 'done testing')
    await page.click('#reason-ok')
    await page.waitForFunction(() => /Remove qa-anna/.test(document.querySelector('#result')?.textContent ?? ''))
    assert.equal(await redis.client.sismember('dbshift:{shop}:allow', 'qa-anna'), 0)

    await page.click('[data-ramp="abort"]')
    await page.fill('#reason-input', 'enough')
    await page.click('#reason-ok')
    await page.waitForFunction(() => /aborted/.test(document.querySelector('#ramp-progress')?.textContent ?? ''))
  })

  await t.test('"which version" agrees with the router for a list of users', async () => {
    await redis.client.sadd('dbshift:{shop}:deny', 'user-3')
    await untilRollout(proxy.app, (s) => s.deny.has('user-3'))
    for (const user of [...users.slice(0, 12), 'ünïcode-user']) {
      await page.fill('#which-user', user)
      await page.click('#which-form button[type="submit"]')
      const shown = await page.waitForSelector(`#which-result [data-user="${user}"]`)
      const routed = await getAs(proxy.url, user)
      assert.equal(await shown.getAttribute('data-version'), routed.version, user)
    }
    await page.fill('#which-user', 'user-3')
    await page.click('#which-form button[type="submit"]')
    await page.waitForSelector('#which-result [data-user="user-3"][data-version="legacy"]')
    assert.match(await page.textContent('#which-result') ?? '', /deny-set/)
  })

  await t.test('no cookie is ever set, and the page made no request outside the admin port', async () => {
    assert.deepEqual(await watched.context.cookies(), [])
    assert.deepEqual(watched.setCookies, [])
    assert.equal(await page.evaluate(() => document.cookie), '')
    assert.deepEqual(watched.requests.filter((url) => !url.startsWith('data:') && new URL(url).host !== admin.host), [])
    assert.deepEqual(watched.errors, [])
  })

  await t.test('at 375 px wide (a phone) there is no horizontal scroll, in light and dark', async () => {
    for (const colorScheme of ['light', 'dark'] as const) {
      const phone = await openConsole(browser, `${proxy.adminUrl}/`, { width: 375, height: 812, colorScheme })
      await untilPolled(phone.page, 2)
      await phone.page.waitForFunction(() => document.querySelectorAll('.chart canvas').length === 3)
      const { scrollWidth, innerWidth } = await phone.page.evaluate(() => ({ scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth }))
      assert.ok(scrollWidth <= innerWidth, `${colorScheme}: the page is ${scrollWidth} px wide in a ${innerWidth} px window`)
      assert.deepEqual(phone.errors, [])
      await phone.context.close()
    }
  })
})

test('the documentation\'s screenshots: a 20% bake under traffic, then an L1 trip', { skip: !SCREENSHOTS && 'set DBSHIFT_SCREENSHOTS=1 to write docs/images/console-*.png' }, async (t) => {
  const redis = await startRedis(t)
  await redis.client.flushall()
  const legacy = await startUpstream(t, 'legacy', (_req, res) => { setTimeout(() => res.end('{}'), 8 + Math.random() * 10) })
  let failing = 0.01
  const migrated = await startUpstream(t, 'migrated', (_req, res) => {
    setTimeout(() => {
      res.writeHead(Math.random() < failing ? 500 : 200)
      res.end('{}')
    }, 12 + Math.random() * 25)
  })
  const proxy = await startProxy(t, testConfig(redis.url, legacy.url, migrated.url, {
    instanceId: 'edge-a',
    rollout: { name: 'checkout' },
    admin: { token: TOKEN },
    guards: { signalPollIntervalMs: 200, l3: { enabled: true, sampleRate: 0 } }
  }))
  const keys = proxy.app.store.keys
  await redis.client.set(keys.percent, '5')
  await redis.client.sadd(keys.allow, 'qa-anna', 'qa-ben')
  await redis.client.set('dbshift:{checkout}:signal:db_load', '0.42', 'EX', 3600)
  await untilRollout(proxy.app, (s) => s.percent === 5)
  const started = await fetch(`${proxy.adminUrl}/schedule`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ steps: [20, 50, 100], bake: '48h' }) })
  assert.equal(started.status, 201)
  await untilRollout(proxy.app, (s) => s.percent === 20)
  const now = Date.now()
  for (const [id, percent] of [['edge-b', 20], ['edge-c', 5]] as const) {
    await redis.client.hset(keys.instances, id, JSON.stringify({
      id, percent, state: 'active', lastSyncAt: now, rollbackPending: false, traffic: { legacy: { rps: 38.2, errorRate: 0.001 }, migrated: { rps: 9.6, errorRate: 0.012 } }, at: now, expiresAt: now + 3_600_000
    }))
  }

  // Traffic from 500 users until the history holds a minute of points.
  const sending = { on: true }
  const users = Array.from({ length: 500 }, (_, i) => `customer-${i}`)
  const send = async (): Promise<void> => {
    while (sending.on) await getAs(proxy.url, users[Math.floor(Math.random() * users.length)], '/orders')
  }
  const senders = Array.from({ length: 4 }, send)
  const history = async (): Promise<number> => ((await (await fetch(`${proxy.adminUrl}/console/history`)).json()) as { points: unknown[] }).points.length
  while (await history() < 8) await delay(1_000) // the history takes a point every 10 s

  const browser = await startBrowser(t)
  for (const [name, size] of [['laptop', { width: 1280, height: 900 }], ['phone', { width: 375, height: 812 }]] as const) {
    for (const colorScheme of ['light', 'dark'] as const) {
      const shot = await openConsole(browser, `${proxy.adminUrl}/`, { ...size, colorScheme })
      await untilPolled(shot.page, 2)
      await shot.page.waitForFunction(() => document.querySelectorAll('.chart canvas').length === 3)
      await shot.page.waitForSelector('#fleet-table tr.lagging')
      assert.deepEqual(shot.errors, [])
      await screenshot(shot.page, `console-${name}-${colorScheme}`)
      await shot.context.close()
    }
  }

  // The migrated version starts failing: the L1 fast window trips, and the page says why.
  failing = 0.9
  await untilRollout(proxy.app, (s) => s.rolledBack, 30_000)
  const tripped = await openConsole(browser, `${proxy.adminUrl}/`)
  await tripped.page.waitForFunction(() => /rolled back at/.test(document.querySelector('[data-level="L1"] .sentence')?.textContent ?? ''))
  sending.on = false
  await Promise.all(senders)
  await screenshot(tripped.page, 'console-laptop-tripped')
})
