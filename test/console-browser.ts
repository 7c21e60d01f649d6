import { mkdirSync } from 'node:fs'
import type { TestContext } from 'node:test'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'

/** Debian's chromium package; nothing is downloaded at test time. */
export const CHROMIUM = process.env.DBSHIFT_CHROMIUM ?? '/usr/bin/chromium'

/** Set DBSHIFT_SCREENSHOTS=1 to write the documentation's screenshots to docs/images/ while the tests run. */
export const SCREENSHOTS = process.env.DBSHIFT_SCREENSHOTS === '1'

/**
 * A headless Chromium of the test's own, closed on teardown. playwright gives every launch a fresh, empty
 * profile (its own --user-data-dir); the flags keep the browser from calling anywhere by itself.
 */
export async function startBrowser (t: Pick<TestContext, 'after'>): Promise<Browser> {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.after(async () => await browser.close())
  return browser
}

export interface WatchedPage {
  context: BrowserContext
  page: Page
  /** Uncaught script errors, and Content-Security-Policy refusals reported on the console. */
  errors: string[]
  /** Every URL the page asked for. */
  requests: string[]
  /** Every Set-Cookie header the page was sent. */
  setCookies: string[]
}

/** A page in a context of its own (no shared storage), with its errors and requests recorded. */
export async function openConsole (browser: Browser, url: string, options: { width?: number, height?: number, colorScheme?: 'light' | 'dark' } = {}): Promise<WatchedPage> {
  const context = await browser.newContext({ viewport: { width: options.width ?? 1280, height: options.height ?? 900 }, colorScheme: options.colorScheme ?? 'light' })
  const page = await context.newPage()
  const watched: WatchedPage = { context, page, errors: [], requests: [], setCookies: [] }
  page.on('pageerror', (err) => watched.errors.push(`pageerror: ${err.message}`))
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content Security Policy|Uncaught|TypeError|ReferenceError/.test(message.text())) watched.errors.push(`console: ${message.text()}`)
  })
  page.on('request', (request) => watched.requests.push(request.url()))
  page.on('response', (response) => {
    const cookie = response.headers()['set-cookie']
    if (cookie !== undefined) watched.setCookies.push(cookie)
  })
  await page.goto(url)
  return watched
}

/** Waits until the page has finished `count` rounds of polling (each reads every admin endpoint once). */
export async function untilPolled (page: Page, count = 1): Promise<void> {
  await page.waitForFunction((n) => Number(document.body.dataset.polls ?? 0) >= n, count)
}

export async function screenshot (page: Page, name: string): Promise<void> {
  if (!SCREENSHOTS) return
  mkdirSync('docs/images', { recursive: true })
  await page.screenshot({ path: `docs/images/${name}.png`, fullPage: true })
}
