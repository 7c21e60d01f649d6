import assert from 'node:assert/strict'
import { test } from 'node:test'
import { UserKeyReader, toByteString, fromByteString } from '../src/routing/user-key.ts'

// Node gives header values as latin1 strings: these helpers send bytes the way a real socket would.
const asHeader = (bytes: Buffer): string => bytes.toString('latin1')
const reader = new UserKeyReader('X-User-ID', 'uid')

test('a missing, empty, over-long, non-UTF-8 or control-character key is anonymous', () => {
  assert.equal(reader.read({}), undefined)
  assert.equal(reader.read({ 'x-user-id': '' }), undefined)
  assert.equal(reader.read({ 'x-user-id': 'a'.repeat(257) }), undefined)
  assert.equal(reader.read({ 'x-user-id': 'a'.repeat(256) }), 'a'.repeat(256))
  assert.equal(reader.read({ 'x-user-id': asHeader(Buffer.from([0x61, 0xff, 0xfe])) }), undefined) // invalid UTF-8
  assert.equal(reader.read({ 'x-user-id': asHeader(Buffer.from([0xc3])) }), undefined) // truncated sequence
  assert.equal(reader.read({ 'x-user-id': 'bob\u0001' }), undefined)
  assert.equal(reader.read({ 'x-user-id': 'tab\there' }), undefined)
  assert.equal(reader.read({ 'x-user-id': ['a', 'b'] as unknown as string }), undefined) // sent twice: ambiguous
  // Node joins a header sent twice with ", ": the raw headers tell it apart from one value.
  assert.equal(reader.read({ 'x-user-id': 'alice, bob' }, ['Host', 'x', 'X-User-ID', 'alice', 'x-user-id', 'bob']), undefined)
  assert.equal(reader.read({ 'x-user-id': 'alice, bob' }, ['Host', 'x', 'X-User-ID', 'alice, bob']), 'alice, bob')
  // C1 control characters (here U+0085, NEXT LINE) are control characters too.
  assert.equal(reader.read({ 'x-user-id': asHeader(Buffer.from('a\u0085b', 'utf8')) }), undefined)
  assert.equal(reader.read({ 'x-user-id': asHeader(Buffer.from('a\u00a0b', 'utf8')) }), asHeader(Buffer.from('a\u00a0b', 'utf8')))
})

test('a UTF-8 key is kept as its raw bytes, and its byte length counts toward the limit', () => {
  const jose = asHeader(Buffer.from('José', 'utf8'))
  assert.equal(reader.read({ 'x-user-id': jose }), toByteString('José'))
  assert.equal(fromByteString(toByteString('日本語ユーザー')), '日本語ユーザー')
  const longUtf8 = asHeader(Buffer.from('é'.repeat(129), 'utf8')) // 258 bytes, 129 characters
  assert.equal(reader.read({ 'x-user-id': longUtf8 }), undefined)
})

test('the cookie is a second source, used only when the header is absent', () => {
  assert.equal(reader.read({ cookie: 'theme=dark; uid=carol; x=1' }), 'carol')
  assert.equal(reader.read({ cookie: 'uid="quoted"' }), 'quoted')
  assert.equal(reader.read({ 'x-user-id': 'dave', cookie: 'uid=carol' }), 'dave')
  assert.equal(reader.read({ cookie: 'other=1' }), undefined)
  assert.equal(new UserKeyReader('x-user-id').read({ cookie: 'uid=carol' }), undefined)
})
