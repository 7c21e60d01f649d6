import { createHmac, timingSafeEqual } from 'node:crypto'

/** The cookie that carries "this user wrote until …" to every instance. */
export const RYW_COOKIE = 'dbshift_ryw'
export const DEFAULT_READ_YOUR_WRITES_MS = 2_000
/** The shortest `rollout.cookieSecret`: 32 characters, as many bytes as the HMAC-SHA256 key it becomes. */
export const MIN_COOKIE_SECRET_LENGTH = 32
/** Users remembered by the in-process marker at most; the oldest marks go first beyond it. */
export const DEFAULT_MAX_MARKS = 100_000
/** How far another instance's clock may run ahead of this one before its cookie's expiry is not believed. */
const MAX_CLOCK_SKEW_MS = 1_000
const SIGNATURE_BYTES = 32

export interface ReadYourWritesOptions {
  /** `rollout.readYourWritesMs`: how long after a write the user's reads stay on legacy. */
  windowMs: number
  /** `rollout.cookieSecret`; without one no cookie is issued or believed, and only the marker holds. */
  secret?: string | undefined
  /** The rollout name, signed into the cookie so that one rollout's cookie means nothing to another. */
  rollout: string
  maxMarks?: number
  /** Adds `Secure` to the cookie (the proxy port serves HTTPS). */
  secure?: boolean
}

/**
 * Read your writes for the split cohort (reads on migrated, writes on legacy): after such a user writes, their
 * reads go to legacy for the window, because migrated may not have the write yet (the forward sync lags).
 * Two records of the write, so that it holds on every instance and for clients without cookies:
 * - a cookie, `<until ms>.<base64url HMAC-SHA256(secret, "<rollout>:<until>:<user key>")>`, checked in constant
 *   time; one that is forged, for another user, expired, or dated further ahead than the window is ignored;
 * - a marker on the instance that took the write: a bounded map of user key → until, swept as marks are added
 *   (no timer).
 * Clocks are injected (`now`, ms since the epoch) so that the window is tested without waiting for it.
 */
export class ReadYourWrites {
  #windowMs = 0
  readonly #secret: Buffer | undefined
  readonly #rollout: string
  #attributes = ''
  readonly #secure: boolean
  readonly #expected = Buffer.alloc(SIGNATURE_BYTES)
  readonly #given = Buffer.alloc(SIGNATURE_BYTES + 3)
  /** The marker: user key → until, plus a ring of the marks in the order they were made, for the sweep. */
  readonly #until = new Map<string, number>()
  readonly #ringKeys: Array<string | undefined>
  readonly #ringUntil: Float64Array
  #head = 0
  #size = 0

  constructor (options: ReadYourWritesOptions) {
    this.#secret = options.secret === undefined ? undefined : Buffer.from(options.secret, 'utf8')
    this.#rollout = options.rollout
    this.#secure = options.secure === true
    this.windowMs = options.windowMs
    const capacity = options.maxMarks ?? DEFAULT_MAX_MARKS
    this.#ringKeys = new Array<string | undefined>(capacity).fill(undefined)
    this.#ringUntil = new Float64Array(capacity)
  }

  /** `rollout.readYourWritesMs`; a reload may change it, keeping the marks already made. */
  get windowMs (): number {
    return this.#windowMs
  }

  set windowMs (windowMs: number) {
    this.#windowMs = windowMs
    this.#attributes = `; Max-Age=${Math.max(1, Math.ceil(windowMs / 1000))}; Path=/; HttpOnly; SameSite=Lax${this.#secure ? '; Secure' : ''}`
  }

  /** True when cookies are issued and believed (a secret is configured). */
  get cookies (): boolean {
    return this.#secret !== undefined
  }

  /** Users the marker remembers now (some may have expired and wait for the sweep). */
  get marked (): number {
    return this.#until.size
  }

  /**
   * Records a write by a user of the split cohort at `now`. Returns the `Set-Cookie` header value to send with
   * the answer, or undefined when no secret is configured.
   */
  wrote (key: string, now: number): string | undefined {
    const until = now + this.#windowMs
    this.#sweep(now)
    this.#mark(key, until)
    if (this.#secret === undefined) return undefined
    return `${RYW_COOKIE}=${until}.${this.#sign(key, until).toString('base64url')}${this.#attributes}`
  }

  /** True when the user wrote within the window: marked here, or carrying a valid cookie (the Cookie header). */
  recent (key: string, cookieHeader: string | undefined, now: number): boolean {
    const until = this.#until.get(key)
    if (until !== undefined && now < until) return true
    return cookieHeader !== undefined && this.#secret !== undefined && this.#validCookie(key, cookieHeader, now)
  }

  #validCookie (key: string, header: string, now: number): boolean {
    const value = cookieValue(header)
    if (value === undefined) return false
    const dot = value.indexOf('.')
    if (dot < 1 || dot > 16) return false
    const until = Number(value.slice(0, dot))
    if (!Number.isSafeInteger(until) || now >= until || until - now > this.#windowMs + MAX_CLOCK_SKEW_MS) return false
    const signature = value.slice(dot + 1)
    if (signature.length !== 43) return false // 32 bytes in unpadded base64url
    const n = this.#given.write(signature, 'base64url')
    if (n !== SIGNATURE_BYTES) return false
    this.#sign(key, until).copy(this.#expected)
    return timingSafeEqual(this.#expected, this.#given.subarray(0, SIGNATURE_BYTES))
  }

  #sign (key: string, until: number): Buffer {
    return createHmac('sha256', this.#secret as Buffer)
      .update(`${this.#rollout}:${until}:`, 'utf8')
      .update(key, 'latin1') // keys are byte strings (user-key.ts)
      .digest()
  }

  #mark (key: string, until: number): void {
    const capacity = this.#ringUntil.length
    if (capacity === 0) return
    if (this.#size === capacity) this.#dropOldest()
    const slot = (this.#head + this.#size) % capacity
    this.#ringKeys[slot] = key
    this.#ringUntil[slot] = until
    this.#size++
    this.#until.set(key, until)
  }

  /** Forgets the marks that have expired, oldest first: they were made in order, so they expire in order. */
  #sweep (now: number): void {
    while (this.#size > 0 && (this.#ringUntil[this.#head] as number) <= now) this.#dropOldest()
  }

  #dropOldest (): void {
    const key = this.#ringKeys[this.#head] as string
    // A user marked again later keeps the later mark.
    if (this.#until.get(key) === this.#ringUntil[this.#head]) this.#until.delete(key)
    this.#ringKeys[this.#head] = undefined
    this.#head = (this.#head + 1) % this.#ringUntil.length
    this.#size--
  }
}

/** The value of the `dbshift_ryw` cookie in a Cookie header, or undefined. */
function cookieValue (header: string): string | undefined {
  let from = 0
  for (;;) {
    const at = header.indexOf(RYW_COOKIE, from)
    if (at === -1) return undefined
    const end = at + RYW_COOKIE.length
    const before = at === 0 ? 0x3b : header.charCodeAt(at - 1)
    if ((before === 0x3b || before === 0x20) && header.charCodeAt(end) === 0x3d) {
      const stop = header.indexOf(';', end)
      return header.slice(end + 1, stop === -1 ? undefined : stop).trim()
    }
    from = end
  }
}
