/**
 * The request target as the upstream will see it. Only origin-form (`/path?query`) is forwarded; absolute-form
 * (`http://host/path`) becomes origin-form with the authority kept apart (RFC 9112 §3.2.2: it replaces Host, as
 * nginx and Envoy do); asterisk-form and anything else is answered by dbshift. The path is normalised (repeated
 * slashes merged, dot-segments removed, RFC 3986 §5.2.4) so that under a pool base path it cannot climb out of it
 * and `//host/x` never reaches an upstream that would read it as a network path.
 */

/** A target that is not forwarded, with the reason for the 400. */
export interface RefusedTarget { refused: string }

/** An absolute-form target, rewritten. */
export interface AbsoluteTarget { path: string, authority: string }

const ABSOLUTE = /^https?:\/\/([^/?#@\s]+)([^#\s]*)$/i

/** The normalised origin-form of `url` (the same string when it is already clean: no allocation). */
export function normalisePath (url: string): string {
  const query = url.indexOf('?')
  const end = query < 0 ? url.length : query
  if (before(url.indexOf('//'), end) && before(url.indexOf('/.'), end) && before(url.indexOf('%2e'), end) && before(url.indexOf('%2E'), end)) return url
  const segments = url.slice(0, end).replace(/%2e/gi, '.').split('/')
  const out: string[] = []
  for (let i = 1; i < segments.length; i++) {
    const segment = segments[i] as string
    if (segment === '' || segment === '.') continue
    if (segment === '..') out.pop()
    else out.push(segment)
  }
  const last = segments[segments.length - 1]
  const trailing = out.length > 0 && (last === '' || last === '.' || last === '..')
  return `/${out.join('/')}${trailing ? '/' : ''}${url.slice(end)}`
}

/** A target that does not start with `/`: rewritten when absolute-form, else refused. */
export function otherTarget (url: string): AbsoluteTarget | RefusedTarget {
  if (url === '*') return { refused: 'an asterisk-form target (*) is only answered for OPTIONS' }
  const match = ABSOLUTE.exec(url)
  if (match === null) return { refused: 'the request target must be a path (/…) or an http(s) URL' }
  const rest = match[2] ?? ''
  const path = rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest
  if (!path.startsWith('/')) return { refused: 'the request target must be a path (/…) or an http(s) URL' }
  return { path: normalisePath(path), authority: (match[1] as string).toLowerCase() }
}

function before (index: number, end: number): boolean {
  return index < 0 || index >= end
}
