import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { test } from 'node:test'
import { ReadYourWrites, RYW_COOKIE } from '../src/routing/read-your-writes.ts'

const SECRET = 'a-cookie-secret-of-at-least-32-chars!'
const T0 = Date.UTC(2026, 11, 1, 9, 0, 0)
const instance = (extra: Partial<ConstructorParameters<typeof ReadYourWrites>[0]> = {}): ReadYourWrites =>
  new ReadYourWrites({ windowMs: 2_000, secret: SECRET, rollout: 'default', ...extra })

/** The Cookie header a browser sends back after `Set-Cookie: value`, beside the app's own cookies. */
const cookieHeader = (setCookie: string | undefined): string => `session=abc; ${(setCookie ?? '').split(';')[0] as string}; theme=dark`

test('a cookie issued by one instance is believed by another with the same secret, for the window only', () => {
  const setCookie = instance().wrote('alice', T0)
  assert.match(setCookie ?? '', new RegExp(`^${RYW_COOKIE}=${T0 + 2_000}\\.[A-Za-z0-9_-]{43}; Max-Age=2; Path=/; HttpOnly; SameSite=Lax$`))
  const other = instance()
  assert.equal(other.recent('alice', cookieHeader(setCookie), T0 + 1), true)
  assert.equal(other.recent('alice', cookieHeader(setCookie), T0 + 1_999), true)
  assert.equal(other.recent('alice', cookieHeader(setCookie), T0 + 2_000), false) // expired
  assert.equal(other.recent('alice', undefined, T0 + 1), false) // no cookie, not marked here
  assert.equal(other.marked, 0)
})

test('a forged, tampered, foreign or re-dated cookie is ignored', () => {
  const setCookie = instance().wrote('alice', T0) as string
  const value = (setCookie.split(';')[0] as string).slice(RYW_COOKIE.length + 1)
  const [until, signature] = value.split('.') as [string, string]
  const other = instance()
  const check = (cookie: string, key = 'alice'): boolean => other.recent(key, `${RYW_COOKIE}=${cookie}`, T0 + 1)
  assert.equal(check(value), true)
  assert.equal(check(value, 'bob'), false) // another user's cookie
  assert.equal(check(`${Number(until) + 1_000}.${signature}`), false) // the expiry moved
  assert.equal(check(`${until}.${signature.slice(0, -1)}${signature.endsWith('A') ? 'B' : 'A'}`), false)
  assert.equal(check(`${until}.`), false)
  assert.equal(check(`${until}`), false)
  assert.equal(check('garbage'), false)
  assert.equal(check(`${until}.${'A'.repeat(43)}`), false)
  assert.equal(check(`${until}.${signature}${signature}`), false)
  assert.equal(new ReadYourWrites({ windowMs: 2_000, secret: 'another-secret-of-at-least-32-chars', rollout: 'default' }).recent('alice', `${RYW_COOKIE}=${value}`, T0 + 1), false)
  assert.equal(instance({ rollout: 'checkout' }).recent('alice', `${RYW_COOKIE}=${value}`, T0 + 1), false)
  // Signed with the right secret, but dated far beyond the window: not believed.
  const far = T0 + 3_600_000
  const forgedLater = `${far}.${createHmac('sha256', SECRET).update(`default:${far}:alice`).digest('base64url')}`
  assert.equal(check(forgedLater), false)
  const fair = T0 + 2_001
  assert.equal(check(`${fair}.${createHmac('sha256', SECRET).update(`default:${fair}:alice`).digest('base64url')}`), true)
  // A cookie whose name only ends like ours is not ours.
  assert.equal(other.recent('alice', `x${RYW_COOKIE}=${value}`, T0 + 1), false)
})

test('without a secret no cookie is issued or believed, and the marker still holds on this instance', () => {
  const signed = instance().wrote('alice', T0)
  const plain = instance({ secret: undefined })
  assert.equal(plain.cookies, false)
  assert.equal(plain.recent('alice', cookieHeader(signed), T0 + 1), false)
  assert.equal(plain.wrote('alice', T0), undefined)
  assert.equal(plain.recent('alice', undefined, T0 + 1_999), true)
  assert.equal(plain.recent('alice', undefined, T0 + 2_000), false)
})

test('the marker remembers the latest write, is swept as writes come, and stays bounded', () => {
  const marker = instance({ maxMarks: 3 })
  marker.wrote('alice', T0)
  marker.wrote('bob', T0 + 1_000)
  marker.wrote('alice', T0 + 1_500) // a later write keeps alice marked past her first window
  assert.equal(marker.recent('alice', undefined, T0 + 3_000), true)
  assert.equal(marker.recent('bob', undefined, T0 + 3_000), false)
  marker.wrote('carol', T0 + 3_100) // sweeps bob and alice's first mark
  assert.equal(marker.marked, 2)
  for (const user of ['dan', 'erin', 'frank']) marker.wrote(user, T0 + 3_200)
  assert.equal(marker.marked, 3)
  assert.equal(marker.recent('alice', undefined, T0 + 3_300), false) // pushed out by newer marks
  assert.equal(marker.recent('frank', undefined, T0 + 3_300), true)
  assert.equal(marker.recent('dan', undefined, T0 + 3_300), true)
})

test('the Secure attribute is added when the proxy serves HTTPS', () => {
  assert.match(instance({ secure: true, windowMs: 2_500 }).wrote('alice', T0) ?? '', /; Max-Age=3; Path=\/; HttpOnly; SameSite=Lax; Secure$/)
})
