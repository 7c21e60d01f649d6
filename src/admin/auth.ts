import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyRequest, onRequestHookHandler } from 'fastify'
import { AdminDisabledError, UnauthorizedError } from '../errors.ts'

/**
 * Checks `Authorization: Bearer <token>` in constant time (both sides hashed to the same length first).
 * Returns the caller's identity for the audit trail. With no token configured every change is refused.
 */
export function bearerAuth (token: string | undefined, tokenName: string): (request: FastifyRequest) => string {
  const expected = token === undefined ? undefined : digest(token)
  return (request) => {
    if (expected === undefined) throw new AdminDisabledError()
    const header = request.headers.authorization ?? ''
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
    if (match === null || !timingSafeEqual(digest(match[1] as string), expected)) throw new UnauthorizedError()
    return `${tokenName}@${request.ip}`
  }
}

/**
 * The same check as an onRequest hook, so that a change is refused before its body is read or validated (a caller
 * without the token learns nothing about the bodies). `identity(request)` then names the caller.
 */
export function requireToken (token: string | undefined, tokenName: string): { hook: onRequestHookHandler, identity: (request: FastifyRequest) => string } {
  const authenticate = bearerAuth(token, tokenName)
  const callers = new WeakMap<FastifyRequest, string>()
  return {
    hook: async (request) => { callers.set(request, authenticate(request)) },
    identity: (request) => callers.get(request) ?? authenticate(request)
  }
}

/**
 * With `admin.readToken` set, an admin read needs `Authorization: Bearer <token>` holding the read token or the admin
 * token (checked like a change, in constant time). Undefined when no read token is configured: reads are open.
 */
export function readAccess (readToken: string | undefined, adminToken: string | undefined): ((request: Pick<FastifyRequest, 'headers'>) => boolean) | undefined {
  if (readToken === undefined) return undefined
  const accepted = [readToken, ...(adminToken === undefined ? [] : [adminToken])].map(digest)
  return (request) => {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.authorization ?? '')
    if (match === null) return false
    const presented = digest(match[1] as string)
    // Every token is compared, so the time taken does not say which one matched.
    return accepted.map((expected) => timingSafeEqual(presented, expected)).includes(true)
  }
}

function digest (text: string): Buffer {
  return createHash('sha256').update(text).digest()
}
