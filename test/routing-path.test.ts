import assert from 'node:assert/strict'
import { test } from 'node:test'
import fc from 'fast-check'
import { normalisePath, slowPath, type PathRefusalReason } from '../src/routing/path.ts'
import { RouteTable } from '../src/routing/routes.ts'

const table = new RouteTable([
  { name: 'reports', path: '/reports/**', mode: 'split' },
  { name: 'beta', path: '/beta/**', mode: 'split' },
  { name: 'exact', path: '/orders/new', mode: 'legacy' }
])
const routeOf = (target: string): string => {
  const path = normalisePath(target)
  assert.equal(typeof path, 'string', `${target} was refused`)
  return table.match('GET', path as string).name
}

test('every spelling of a path that the normaliser folds lands on the same route', () => {
  const spellings: Record<string, string[]> = {
    '/reports/q': ['/reports/q', '//reports//q', '/%72eports/q', '/x/../reports/q', '/./reports/q', '/reports/q/', '/reports/./q', '/re%70orts/q?x=1', '/%2E/reports/q', '/a/b/%2e%2e/../reports/q', '/reports///q//'],
    '/beta/x': ['/beta/x', '/./beta/x', '/beta/x/', '//beta/x', '/beta/%78', '/beta/y/../x', '/%62%65%74%61/x'],
    '/orders/new': ['/orders/new', '/orders//new/', '/orders/%6Eew', '/orders/new?next=/x/../y']
  }
  for (const [path, list] of Object.entries(spellings)) {
    for (const spelling of list) assert.equal(normalisePath(spelling), path, spelling)
  }
  assert.deepEqual(spellings['/reports/q']?.map(routeOf), spellings['/reports/q']?.map(() => 'reports'))
  assert.deepEqual(spellings['/beta/x']?.map(routeOf), spellings['/beta/x']?.map(() => 'beta'))
  assert.deepEqual(spellings['/orders/new']?.map(routeOf), spellings['/orders/new']?.map(() => 'exact'))
})

test('case is kept, other encodings stay encoded with upper-case hex, raw bytes above 0x7F are encoded', () => {
  assert.equal(normalisePath('/Reports/Q'), '/Reports/Q')
  assert.equal(routeOf('/Reports/q'), 'default')
  assert.equal(normalisePath('/a%3fb'), '/a%3Fb') // an encoded "?" is part of the path, not a query
  assert.equal(normalisePath('/caf%c3%a9'), '/caf%C3%A9')
  assert.equal(normalisePath('/caf\u00c3\u00a9'), '/caf%C3%A9') // the raw UTF-8 bytes, as Node hands them over
  assert.equal(normalisePath('/a%20b'), '/a%20b')
  assert.equal(normalisePath('/100%25'), '/100%25') // decoded once: %25 stays %25
  assert.equal(normalisePath('/'), '/')
  assert.equal(normalisePath('/?q=1'), '/')
  assert.equal(normalisePath('//'), '/')
  assert.equal(normalisePath('/a/..'), '/')
  assert.equal(normalisePath('/.well-known/x'), '/.well-known/x')
  assert.equal(normalisePath('/a..b/...'), '/a..b/...')
})

test('what cannot be normalised is refused, with a reason', () => {
  const refused: Array<[string, PathRefusalReason]> = [
    ['/reports%2Fq', 'encoded_slash'],
    ['/reports%2fq', 'encoded_slash'],
    ['/a%5Cb', 'backslash'],
    ['/a\\b', 'backslash'],
    ['/a%00b', 'control_character'],
    ['/a\u0000b', 'control_character'],
    ['/a%0Ab', 'control_character'],
    ['/a%', 'invalid_percent_encoding'],
    ['/a%4', 'invalid_percent_encoding'],
    ['/a%zz', 'invalid_percent_encoding'],
    ['/a%4g/b', 'invalid_percent_encoding'],
    ['/..', 'escapes_root'],
    ['/../etc/passwd', 'escapes_root'],
    ['/a/../../b', 'escapes_root'],
    ['/%2e%2e/b', 'escapes_root'],
    ['/a#b', 'fragment'],
    ['reports/q', 'not_origin_form'],
    ['*', 'not_origin_form'],
    ['http://example.com/reports/q', 'not_origin_form'],
    ['', 'not_origin_form']
  ]
  for (const [target, reason] of refused) {
    const result = normalisePath(target)
    assert.equal(typeof result, 'object', target)
    assert.equal((result as { reason: string }).reason, reason, target)
  }
  // The query is not the path: what it holds is the upstream's business.
  assert.equal(normalisePath('/a?b=%2F&c=..#'), '/a')
})

test('the fast path and the general case agree, and normalising twice changes nothing (property)', () => {
  const char = fc.constantFrom('/', '.', '%', '2', 'e', 'E', 'f', 'F', 'a', 'Z', '~', '-', '?', '#', '\\', ' ', '\u0000', '\u00e9', '7', '2F', '%2e', '%41', '%2F')
  fc.assert(fc.property(fc.array(char, { maxLength: 24 }).map((parts) => `/${parts.join('')}`), (target) => {
    const fast = normalisePath(target)
    assert.deepEqual(fast, slowPath(target), target)
    if (typeof fast === 'string') {
      assert.equal(normalisePath(fast), fast, target)
      assert.ok(!fast.includes('//') && !/\/\.\.?(\/|$)/.test(fast) && (fast === '/' || !fast.endsWith('/')), fast)
    }
  }), { numRuns: 5000 })
})

test('an already normal path comes back as the same string', () => {
  const target = '/reports/2026/q'
  assert.equal(normalisePath(target), target)
  assert.equal(normalisePath(`${target}?page=2`), target)
})
