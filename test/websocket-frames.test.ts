import assert from 'node:assert/strict'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import type { Writable } from 'node:stream'
import { test, type TestContext } from 'node:test'
import * as ws from 'ws'
import { Tunnel } from '../src/proxy/tunnel.ts'
import { closeFrame, FrameCursor } from '../src/proxy/ws-frames.ts'

// ws's own frame writer and parser, as the reference for ours (exported by ws, not declared in @types/ws).
interface ReceiverLike extends Writable {
  on: (event: string, listener: (...args: any[]) => void) => this
}
const { Receiver, Sender } = ws as unknown as {
  Receiver: new (options: { isServer: boolean, maxPayload?: number }) => ReceiverLike
  Sender: { frame: (data: Buffer, options: { fin: boolean, opcode: number, mask: boolean, readOnly: boolean, rsv1: boolean }) => Buffer[] }
}

const frame = (data: Buffer, opcode: number, mask: boolean, fin = true): Buffer =>
  Buffer.concat(Sender.frame(data, { fin, opcode, mask, readOnly: false, rsv1: false }))

test('closeFrame writes what ws reads as a close with that code, masked for a server and unmasked for a client', async () => {
  for (const [masked, isServer] of [[false, false], [true, true]] as const) {
    const receiver = new Receiver({ isServer })
    const concluded = once(receiver, 'conclude')
    receiver.write(closeFrame(1012, masked))
    const [code] = await concluded as [number]
    assert.equal(code, 1012)
  }
  assert.notDeepEqual(closeFrame(1001, true), closeFrame(1001, true), 'a fresh masking key each time')
})

test('FrameCursor finds every frame boundary, whatever the lengths and however the bytes are split', () => {
  const sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]
  for (const mask of [false, true]) {
    const frames = sizes.map((size, i) => frame(randomBytes(size), i === 0 ? 0x9 : 0x2, mask))
    const stream = Buffer.concat(frames)
    const boundaries = new Set<number>()
    let offset = 0
    for (const f of frames) boundaries.add(offset += f.length)
    for (const step of [1, 3, 7, 1000, stream.length]) {
      const cursor = new FrameCursor()
      for (let at = 0; at < stream.length; at += step) {
        const chunk = stream.subarray(at, Math.min(at + step, stream.length))
        assert.equal(cursor.advance(chunk, false), chunk.length)
        assert.equal(cursor.atBoundary, boundaries.has(at + chunk.length), `mask ${String(mask)}, step ${step}, at ${at + chunk.length}`)
      }
    }
    // Stopping: from inside the first big frame, the cursor passes exactly the rest of it.
    const cursor = new FrameCursor()
    const start = (frames[0] as Buffer).length + (frames[1] as Buffer).length + (frames[2] as Buffer).length + (frames[3] as Buffer).length + 10
    cursor.advance(stream.subarray(0, start), false)
    const passed = cursor.advance(stream.subarray(start), true)
    assert.equal(start + passed, start - 10 + (frames[4] as Buffer).length)
    assert.equal(cursor.advance(stream.subarray(start + passed), true), 0, 'already at a boundary: nothing more passes')
  }
})

/** Two connected sockets: [the end dbshift holds, the peer's end]. */
async function socketPair (t: TestContext): Promise<[Socket, Socket]> {
  const server = createServer({ allowHalfOpen: true })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => { server.close() })
  const accepted = once(server, 'connection')
  const peer = connect((server.address() as AddressInfo).port, '127.0.0.1')
  const [held] = await accepted as [Socket]
  t.after(() => { held.destroy(); peer.destroy() })
  return [held, peer]
}

test('a close requested in the middle of a frame waits for the frame to end: the client gets it whole, then 1012', async (t) => {
  const [client, browser] = await socketPair(t)
  const [upstream, app] = await socketPair(t)
  const tunnel = new Tunnel(client, upstream)

  const browserSide = new Receiver({ isServer: false, maxPayload: 0 })
  const appSide = new Receiver({ isServer: true, maxPayload: 0 })
  browser.pipe(browserSide)
  app.pipe(appSide)
  const message = once(browserSide, 'message')
  const browserClose = once(browserSide, 'conclude')
  const appClose = once(appSide, 'conclude')

  const payload = randomBytes(1_000_000)
  const big = frame(payload, 0x2, false)
  app.write(big.subarray(0, 300_000))
  await once(browser, 'readable') // the first part is through dbshift
  const closing = tunnel.close(1012)
  app.write(big.subarray(300_000))
  app.write(frame(Buffer.from('after the close'), 0x1, false)) // must not reach the browser

  const [data] = await message as [Buffer]
  assert.ok(data.equals(payload), 'the frame in flight arrived whole')
  assert.equal((await browserClose)[0], 1012)
  assert.equal((await appClose)[0], 1001, 'the upstream gets a masked close frame')
  browser.end()
  app.end()
  await closing
})
