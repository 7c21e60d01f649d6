import { isIP } from 'node:net'
import { hostname } from 'node:os'
import { HostNotAllowedError } from '../errors.ts'

/**
 * DNS rebinding: a web page a browser loaded from `evil.example` can make that name resolve to 127.0.0.1 and read
 * the admin port through the browser, which still sends `Host: evil.example`. So the admin port answers only to its
 * own names: an IP literal (a rebinding needs a name), `localhost` and `*.localhost`, this machine's host name, the
 * host it listens on, and `admin.allowedHosts` (exact names, or `.example.com` for any name under it).
 * A request without a Host header (HTTP/1.0) has nothing to rebind and is answered.
 */
export function hostCheck (listenHost: string, allowedHosts: readonly string[]): (host: string | undefined) => void {
  const exact = new Set(['localhost', hostname().toLowerCase(), listenHost.toLowerCase().replace(/^\[(.*)\]$/, '$1')])
  const suffixes = ['.localhost']
  for (const name of allowedHosts) {
    const lower = name.toLowerCase()
    if (lower.startsWith('.')) suffixes.push(lower)
    else exact.add(lower)
  }
  return (host) => {
    if (host === undefined || host === '') return
    const name = hostName(host)
    if (isIP(name) !== 0 || exact.has(name) || suffixes.some((suffix) => name.endsWith(suffix))) return
    throw new HostNotAllowedError(JSON.stringify(host))
  }
}

/** The name of a Host header value, lower-cased, without its port or IPv6 brackets (and without a trailing dot). */
function hostName (host: string): string {
  const lower = host.trim().toLowerCase()
  const name = lower.startsWith('[') ? lower.slice(1, lower.indexOf(']')) : lower.replace(/:\d*$/, '')
  return name.endsWith('.') ? name.slice(0, -1) : name
}
