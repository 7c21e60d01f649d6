import { once } from 'node:events'
import { createServer, type IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { TestContext } from 'node:test'
import { WebSocket, WebSocketServer, type VerifyClientCallbackAsync } from 'ws'
import { Router } from '../src/routing/decide.ts'

type Teardown = Pick<TestContext, 'after'>

export interface WsUpstream {
  url: string
  server: Server
  wss: WebSocketServer
  /** Handshakes the server accepted, with the headers it saw. */
  handshakes: IncomingMessage[]
  /** Close codes the server received, in order. */
  closeCodes: number[]
  /** Resolves with the next close code the server receives. */
  nextClose: () => Promise<number>
}

/**
 * A real WebSocket upstream (`ws`): it says who it is in a first JSON message ({ servedBy, tag, user }) and then
 * echoes every message as it came (text stays text, binary stays binary). Plain HTTP requests get JSON naming it.
 */
export async function startWsUpstream (t: Teardown, name: string, options: { verifyClient?: VerifyClientCallbackAsync } = {}): Promise<WsUpstream> {
  const server = createServer((req, res) => {
    req.resume()
    const body = JSON.stringify({ servedBy: name, tag: req.headers['x-dbshift-version'], upgrade: req.headers.upgrade ?? null, connection: req.headers.connection ?? null })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
  const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 * 1024, verifyClient: options.verifyClient })
  const handshakes: IncomingMessage[] = []
  const closeCodes: number[] = []
  const waiting: Array<(code: number) => void> = []
  wss.on('connection', (socket, req) => {
    handshakes.push(req)
    socket.send(JSON.stringify({ servedBy: name, tag: req.headers['x-dbshift-version'], user: req.headers['x-user-id'] }))
    socket.on('message', (data, isBinary) => { socket.send(data, { binary: isBinary }) })
    socket.on('close', (code) => {
      closeCodes.push(code)
      waiting.shift()?.(code)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(async () => {
    for (const client of wss.clients) client.terminate()
    wss.close()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    server,
    wss,
    handshakes,
    closeCodes,
    nextClose: async () => await new Promise((resolve) => waiting.push(resolve))
  }
}

export interface WsClient {
  socket: WebSocket
  /** The 101's x-dbshift-version. */
  version: string | undefined
  /** The upstream's first message. */
  hello: { servedBy: string, tag: string, user?: string }
  /** Resolves with the next message. */
  next: () => Promise<{ data: Buffer, isBinary: boolean }>
  /** Sends `data` and resolves with the next message. */
  echo: (data: string | Buffer) => Promise<{ data: Buffer, isBinary: boolean }>
  /** Resolves with the close code and reason when the connection closes. */
  closed: Promise<{ code: number, reason: string }>
}

/** Opens a WebSocket through dbshift as `user` and waits for the upstream's first message. */
export async function connectAs (t: Teardown, proxyUrl: string, user: string | undefined, path = '/live'): Promise<WsClient> {
  const socket = new WebSocket(proxyUrl.replace(/^http/, 'ws') + path, { headers: user === undefined ? {} : { 'x-user-id': user }, maxPayload: 64 * 1024 * 1024 })
  t.after(() => { socket.terminate() })
  let version: string | undefined
  socket.once('upgrade', (res) => { version = res.headers['x-dbshift-version'] as string | undefined })
  const closed = new Promise<{ code: number, reason: string }>((resolve) => {
    socket.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  const [first] = await once(socket, 'message') as [Buffer]
  const messages: Array<{ data: Buffer, isBinary: boolean }> = []
  const waiting: Array<(message: { data: Buffer, isBinary: boolean }) => void> = []
  socket.on('message', (data: Buffer, isBinary: boolean) => {
    const message = { data, isBinary }
    const next = waiting.shift()
    if (next === undefined) messages.push(message)
    else next(message)
  })
  const next = async (): Promise<{ data: Buffer, isBinary: boolean }> => await new Promise((resolve) => {
    const queued = messages.shift()
    if (queued !== undefined) resolve(queued)
    else waiting.push(resolve)
  })
  return {
    socket,
    version,
    hello: JSON.parse(first.toString()) as WsClient['hello'],
    next,
    echo: async (data) => {
      const answer = next()
      socket.send(data)
      return await answer
    },
    closed
  }
}

/** Attempts a handshake that is expected to be refused; resolves with the answer's status, headers and body. */
export async function refusedHandshake (proxyUrl: string, user?: string, path = '/live'): Promise<{ status: number, headers: IncomingMessage['headers'], body: string }> {
  const socket = new WebSocket(proxyUrl.replace(/^http/, 'ws') + path, { headers: user === undefined ? {} : { 'x-user-id': user } })
  socket.on('error', () => {})
  const [, res] = await once(socket, 'unexpected-response') as [unknown, IncomingMessage]
  let body = ''
  res.setEncoding('utf8')
  for await (const chunk of res) body += chunk as string
  socket.terminate()
  return { status: res.statusCode ?? 0, headers: res.headers, body }
}

const router = new Router({ strategy: 'hash', salt: 'default', anonymous: 'legacy' })

/** `count` user keys whose bucket is in [from, to) under the default rollout's salt. */
export function usersInBuckets (from: number, to: number, count: number, prefix = 'user'): string[] {
  const users: string[] = []
  for (let i = 0; users.length < count; i++) {
    const user = `${prefix}-${i}`
    const bucket = router.bucketOf(user)
    if (bucket >= from && bucket < to) users.push(user)
  }
  return users
}
