/**
 * Secrets never leave the process: what is shown of a URL (in /status, in logs) is its scheme, host(s) and path,
 * never its credentials, query or fragment, where tokens live (`https://hooks.example/x?token=…`,
 * `http://user:password@prometheus:9090`, `redis://:password@redis:6379`).
 */
const URL_PATTERN = /^([a-z][a-z0-9+.-]*:\/\/)(?:[^/?#@]*@)?([^?#]*)/i

/** A URL without its credentials, query and fragment; a string that is no URL is returned without a query. */
export function redactUrl (url: string): string {
  const match = URL_PATTERN.exec(url)
  if (match === null) return withoutQuery(url)
  return `${match[1] as string}${match[2] as string}`
}

/** A request target (`/path?query`) without its query string or fragment. */
export function withoutQuery (target: string): string {
  const end = target.search(/[?#]/)
  return end === -1 ? target : target.slice(0, end)
}

/** A copy of a configuration section in which every URL is shown by redactUrl. */
export function redactUrls<T> (value: T): T {
  if (typeof value === 'string') return (URL_PATTERN.test(value) ? redactUrl(value) : value) as T
  if (Array.isArray(value)) return value.map((item: unknown) => redactUrls(item)) as T
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, redactUrls(item)])) as T
  }
  return value
}
