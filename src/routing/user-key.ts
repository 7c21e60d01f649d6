import { isUtf8 } from 'node:buffer'
import type { IncomingHttpHeaders } from 'node:http'

/** A user key longer than this many bytes is anonymous. */
export const MAX_KEY_BYTES = 256

/**
 * Reads the user key of a request. Node hands header values to JavaScript as latin1 strings (one char per
 * byte), so a key stays in that "byte string" form end to end: it hashes from the raw bytes, and the
 * allow and deny sets are converted to the same form when they are loaded.
 * Returns undefined for an anonymous request: missing, empty, too long, not UTF-8, or with control characters.
 */
export class UserKeyReader {
  readonly #header: string
  readonly #cookie: string | undefined
  readonly #scratch = Buffer.allocUnsafe(MAX_KEY_BYTES)

  constructor (header: string, cookie?: string) {
    this.#header = header.toLowerCase()
    this.#cookie = cookie
  }

  /**
   * `rawHeaders` (the request's, when there is one) tells a header sent twice apart from one value: Node joins
   * duplicates with ", ", and a key sent twice is ambiguous, so anonymous.
   */
  read (headers: IncomingHttpHeaders, rawHeaders?: readonly string[]): string | undefined {
    const value = headers[this.#header]
    if (typeof value === 'string') return rawHeaders !== undefined && this.#sentTwice(rawHeaders) ? undefined : this.#valid(value)
    if (value !== undefined) return undefined
    if (this.#cookie === undefined) return undefined
    const cookie = headers.cookie
    return cookie === undefined ? undefined : this.#valid(cookieValue(cookie, this.#cookie))
  }

  #sentTwice (rawHeaders: readonly string[]): boolean {
    return headerCount(rawHeaders, this.#header) > 1
  }

  #valid (key: string | undefined): string | undefined {
    if (key === undefined) return undefined
    const n = key.length
    if (n === 0 || n > MAX_KEY_BYTES) return undefined
    let ascii = true
    for (let i = 0; i < n; i++) {
      const c = key.charCodeAt(i)
      if (c < 0x20 || c === 0x7f) return undefined
      if (c > 0x7f) {
        ascii = false
        // C1 control characters (U+0080–U+009F) are the bytes C2 80 … C2 9F in UTF-8.
        if (c === 0xc2 && i + 1 < n && key.charCodeAt(i + 1) <= 0x9f) return undefined
      }
    }
    if (ascii) return key
    this.#scratch.write(key, 0, 'latin1')
    return isUtf8(this.#scratch.subarray(0, n)) ? key : undefined
  }
}

/** How many times the header `name` (lower case) was sent, from a request's raw header list. */
export function headerCount (rawHeaders: readonly string[], name: string): number {
  let count = 0
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const raw = rawHeaders[i] as string
    if (raw.length === name.length && raw.toLowerCase() === name) count++
  }
  return count
}

function cookieValue (header: string, name: string): string | undefined {
  for (const part of header.split(';')) {
    const eq = part.indexOf('=')
    if (eq !== -1 && part.slice(0, eq).trim() === name) {
      const value = part.slice(eq + 1).trim()
      return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value
    }
  }
  return undefined
}

/** The byte-string form of a key typed by a person or read from Redis (a JavaScript string). */
export function toByteString (text: string): string {
  return Buffer.from(text, 'utf8').toString('latin1')
}

/** The readable form of a byte-string key, for logs and answers. */
export function fromByteString (key: string): string {
  return Buffer.from(key, 'latin1').toString('utf8')
}
