/**
 * The normalised path of a request target: the one form that route globs and the L2 feature routes are matched
 * against, so that every spelling a server would read as the same path lands on the same route.
 *
 * - The query (from the first `?`) is dropped.
 * - Percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-` `.` `_` `~`) are decoded; every
 *   other percent-encoding stays encoded with upper-case hex digits (§6.2.2.1), and a raw byte above 0x7F is
 *   percent-encoded the same way, so `/caf%c3%a9` and the raw UTF-8 spelling are one path.
 * - Repeated slashes are merged, then `.` and `..` segments are removed (§5.2.4), after the decoding so that
 *   `%2E%2E` is a `..` too.
 * - A trailing slash is dropped (`/beta/x/` is `/beta/x`; the root stays `/`).
 * - Case is kept: paths are case-sensitive (§6.2.2.1 folds only the hex digits), so `/Reports` is not `/reports`.
 *
 * What has no single meaning is refused with a reason, for a 400: an encoded slash or backslash (servers
 * disagree on whether it separates segments), a raw backslash, a NUL or other control character, invalid
 * percent-encoding, a `#`, a target that does not start with `/`, and a `..` that would climb above the root.
 *
 * The normalised path is for matching only; the target sent upstream is the one the client sent.
 */

export const PATH_REFUSALS = {
  not_origin_form: 'the request target must start with "/"',
  invalid_percent_encoding: 'the path has a "%" not followed by two hex digits',
  encoded_slash: 'the path has an encoded "/" (%2F), which servers read differently',
  backslash: 'the path has a "\\" (raw or %5C), which servers read differently',
  control_character: 'the path has a NUL or another control character',
  fragment: 'the request target has a "#"',
  escapes_root: 'the path climbs above the root with ".."'
} as const

export type PathRefusalReason = keyof typeof PATH_REFUSALS

/** Why a target cannot be normalised. One frozen instance per reason, so refusing allocates nothing. */
export interface PathRefusal {
  readonly reason: PathRefusalReason
  readonly message: string
}

const REFUSED = Object.fromEntries(Object.entries(PATH_REFUSALS).map(([reason, message]) =>
  [reason, Object.freeze({ reason, message })])) as unknown as Record<PathRefusalReason, PathRefusal>

/** The normalised path of `target` (a string), or why it has none (a PathRefusal). */
export function normalisePath (target: string): string | PathRefusal {
  const n = target.length
  if (n === 0 || target.charCodeAt(0) !== SLASH) return REFUSED.not_origin_form
  // Fast path: one scan, and the target (or its path part) comes back as it is when it is already normal.
  let prev = SLASH
  let i = 1
  for (; i < n; i++) {
    const c = target.charCodeAt(i)
    if (c === QUERY) break
    if (c <= 0x20 || c >= 0x7f || c === PERCENT || c === BACKSLASH || c === HASH) return slowPath(target)
    if (prev === SLASH && (c === SLASH || (c === DOT && isDotSegment(target, i)))) return slowPath(target)
    prev = c
  }
  if (prev === SLASH && i > 1) return slowPath(target) // a trailing slash
  return i === n ? target : target.slice(0, i)
}

/** True when the segment starting at `i` (a `.`) is `.` or `..`. */
function isDotSegment (target: string, i: number): boolean {
  let j = i + 1
  if (j < target.length && target.charCodeAt(j) === DOT) j++
  if (j === target.length) return true
  const c = target.charCodeAt(j)
  return c === SLASH || c === QUERY
}

/** The general case: decode, then split into segments and resolve them. Exported for the property tests. */
export function slowPath (target: string): string | PathRefusal {
  if (target.length === 0 || target.charCodeAt(0) !== SLASH) return REFUSED.not_origin_form
  let decoded = ''
  const n = target.length
  for (let i = 0; i < n; i++) {
    const c = target.charCodeAt(i)
    if (c === QUERY) break
    if (c === HASH) return REFUSED.fragment
    if (c === BACKSLASH) return REFUSED.backslash
    if (c < 0x20 || c === 0x7f) return REFUSED.control_character
    if (c === PERCENT) {
      const byte = i + 2 < n ? hexValue(target.charCodeAt(i + 1)) * 16 + hexValue(target.charCodeAt(i + 2)) : -1
      if (!(byte >= 0)) return REFUSED.invalid_percent_encoding
      if (byte === SLASH) return REFUSED.encoded_slash
      if (byte === BACKSLASH) return REFUSED.backslash
      if (byte < 0x20 || byte === 0x7f) return REFUSED.control_character
      decoded += isUnreserved(byte) ? String.fromCharCode(byte) : encoded(byte)
      i += 2
    } else if (c > 0xff) {
      // Node hands the target over as one char per byte; a wider char only comes from code, as UTF-8 text.
      const cp = target.codePointAt(i) as number
      for (const byte of Buffer.from(String.fromCodePoint(cp), 'utf8')) decoded += encoded(byte)
      if (cp > 0xffff) i++
    } else if (c > 0x7f || c === 0x20) {
      decoded += encoded(c)
    } else {
      decoded += target[i]
    }
  }
  const out: string[] = []
  for (const segment of decoded.split('/')) {
    if (segment === '' || segment === '.') continue
    if (segment === '..') {
      if (out.length === 0) return REFUSED.escapes_root
      out.pop()
    } else {
      out.push(segment)
    }
  }
  return `/${out.join('/')}`
}

const SLASH = 0x2f
const DOT = 0x2e
const PERCENT = 0x25
const QUERY = 0x3f
const HASH = 0x23
const BACKSLASH = 0x5c
const HEX = '0123456789ABCDEF'

function encoded (byte: number): string {
  return `%${HEX[byte >> 4] as string}${HEX[byte & 15] as string}`
}

/** 0..15, or NaN for a character that is not a hex digit (so that the sum of two is NaN too). */
function hexValue (c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30
  const lower = c | 0x20
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10
  return Number.NaN
}

function isUnreserved (byte: number): boolean {
  const lower = byte | 0x20
  return (lower >= 0x61 && lower <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte === 0x2d || byte === DOT || byte === 0x5f || byte === 0x7e
}
