import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from 'node:http'
import ipaddr from 'ipaddr.js'
import { ConfigError } from '../errors.ts'
import type { Version } from '../routing/decide.ts'

/** The header that tells the upstream and the client which version served the request. */
export const VERSION_HEADER = 'x-dbshift-version'

/** Headers in this namespace are dbshift's own: a client's are dropped (none may pose as shadow traffic). */
const OWN_PREFIX = 'x-dbshift-'

/** Hop-by-hop headers (RFC 9110 §7.6.1) and those undici sets itself: never copied across. */
export const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade',
  'proxy-authorization', 'proxy-authenticate', 'host', 'expect', 'http2-settings', VERSION_HEADER
])

/** How request headers are rewritten for the upstream; built once from the configuration. */
export interface HeaderPolicy {
  /** Send the client's Host (true), or let undici send the pool member's (false). */
  preserveHost: boolean
  /** Whether a peer address is a trusted proxy whose X-Forwarded-* and Forwarded are kept; undefined: none is. */
  trusted: ((address: string) => boolean) | undefined
}

/**
 * The policy for `server.trustedProxies` (addresses or CIDR ranges, IPv4 or IPv6) and `upstream.preserveHost`.
 * Throws a ConfigError naming the entry that is not an address or a range.
 */
export function headerPolicy (trustedProxies: readonly string[], preserveHost: boolean): HeaderPolicy {
  const ranges = trustedProxies.map((entry) => {
    try {
      return entry.includes('/') ? ipaddr.parseCIDR(entry) : [ipaddr.parse(entry), entry.includes(':') ? 128 : 32] as [ipaddr.IPv4 | ipaddr.IPv6, number]
    } catch {
      throw new ConfigError(`server.trustedProxies = ${JSON.stringify(trustedProxies)}: "${entry}" must be an IP address or a CIDR range such as 10.0.0.0/8`)
    }
  })
  if (ranges.length === 0) return { preserveHost, trusted: undefined }
  return {
    preserveHost,
    trusted: (address) => {
      if (!ipaddr.isValid(address)) return false
      let parsed = ipaddr.parse(address)
      if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) parsed = (parsed as ipaddr.IPv6).toIPv4Address()
      return ranges.some(([range, bits]) => range.kind() === parsed.kind() && parsed.match(range, bits))
    }
  }
}

/**
 * The request headers for the upstream: end-to-end headers only, the version tag, Host (kept or not, per the
 * policy; `authority` from an absolute-form target replaces it) and X-Forwarded-For/-Proto/-Host. The client's
 * own X-Forwarded-* and Forwarded are kept (and X-Forwarded-For appended to) only when it is a trusted proxy.
 */
export function upstreamHeaders (req: IncomingMessage, version: Version, policy: HeaderPolicy, authority?: string): Record<string, string | string[]> {
  const source = req.headers
  const named = connectionNamed(source.connection)
  const remote = req.socket.remoteAddress ?? ''
  const trusted = policy.trusted !== undefined && policy.trusted(remote)
  const headers: Record<string, string | string[]> = {}
  for (const name in source) {
    if (HOP_BY_HOP.has(name) || (named !== undefined && named.has(name))) continue
    // x-dbshift-*, x-forwarded-* and forwarded: one test of the first letter keeps the common headers cheap.
    const first = name.charCodeAt(0)
    if (first === 120 /* x */ && (name.startsWith(OWN_PREFIX) || (!trusted && name.startsWith('x-forwarded-')))) continue
    if (first === 102 /* f */ && !trusted && name === 'forwarded') continue
    const value = source[name]
    if (value !== undefined) headers[name] = value
  }
  headers[VERSION_HEADER] = version
  const host = authority ?? source.host
  if (policy.preserveHost && host !== undefined) headers.host = host
  const forwardedFor = trusted ? source['x-forwarded-for'] : undefined
  headers['x-forwarded-for'] = forwardedFor === undefined ? remote : `${String(forwardedFor)}, ${remote}`
  if (headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = 'encrypted' in req.socket ? 'https' : 'http'
  if (headers['x-forwarded-host'] === undefined && host !== undefined) headers['x-forwarded-host'] = host
  return headers
}

/** The response headers for the client: the upstream's end-to-end headers and the version tag. */
export function clientHeaders (source: IncomingHttpHeaders, version: Version): OutgoingHttpHeaders {
  const named = connectionNamed(source.connection)
  const headers: OutgoingHttpHeaders = {}
  for (const name in source) {
    if (HOP_BY_HOP.has(name) || (named !== undefined && named.has(name))) continue
    headers[name] = source[name]
  }
  headers[VERSION_HEADER] = version
  return headers
}

/** Header names listed in a Connection header, which are hop-by-hop for this connection only. */
export function connectionNamed (connection: string | string[] | undefined): Set<string> | undefined {
  // The usual values name no header: skip the split (a measured 0.5% of the proxy's CPU under load).
  if (connection === undefined || connection === 'keep-alive' || connection === 'close') return undefined
  const names = new Set<string>()
  for (const token of String(connection).split(',')) {
    const name = token.trim().toLowerCase()
    if (name !== '' && name !== 'close' && name !== 'keep-alive') names.add(name)
  }
  return names.size === 0 ? undefined : names
}
