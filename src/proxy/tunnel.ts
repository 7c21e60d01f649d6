import type { Socket } from 'node:net'
import { closeFrame, CLOSE_GOING_AWAY, FrameCursor } from './ws-frames.ts'

/**
 * How long a closing WebSocket waits for the frames in flight to end and for both peers to close their side, and
 * how long one side may stay open after the other has closed, before the sockets are destroyed.
 */
export const CLOSE_WAIT_MS = 5_000

/** One direction of the tunnel, and where it stands in the frame stream. */
interface Direction {
  from: Socket
  to: Socket
  /** True when `to` is the upstream: frames to a server are masked (RFC 6455 §5.3). */
  toServer: boolean
  cursor: FrameCursor
  /** Our close frame is out after the last whole frame; anything `from` sends after it is dropped. */
  done: boolean
}

/**
 * An upgraded client socket joined to its upstream socket, both ways, with backpressure: bytes pass untouched,
 * and only the frame boundaries are followed, so that a close frame can be put between two frames when dbshift
 * ends the connection itself.
 */
export class Tunnel {
  /** Resolves once both sockets have closed. */
  readonly closed: Promise<void>
  readonly #client: Socket
  readonly #upstream: Socket
  readonly #directions: [Direction, Direction]
  /** The code sent to the client once dbshift closes the connection; 0 until then. */
  #closeCode = 0
  #timer: NodeJS.Timeout | undefined

  constructor (client: Socket, upstream: Socket) {
    this.#client = client
    this.#upstream = upstream
    this.#directions = [
      { from: upstream, to: client, toServer: false, cursor: new FrameCursor(), done: false },
      { from: client, to: upstream, toServer: true, cursor: new FrameCursor(), done: false }
    ]
    let open = 2
    this.closed = new Promise((resolve) => {
      const onClose = (): void => {
        if (--open > 0) return this.#destroyLater()
        clearTimeout(this.#timer)
        resolve()
      }
      client.once('close', onClose)
      upstream.once('close', onClose)
    })
    for (const direction of this.#directions) this.#relay(direction)
  }

  /**
   * Ends the connection: `code` to the client and 1001 (going away) to the upstream, each sent between two frames,
   * never inside one. Resolves once both sockets have closed (destroyed after CLOSE_WAIT_MS at the latest).
   */
  async close (code: number): Promise<void> {
    if (this.#closeCode === 0) {
      this.#closeCode = code
      this.#destroyLater()
      for (const direction of this.#directions) if (direction.cursor.atBoundary) this.#finish(direction)
    }
    await this.closed
  }

  #relay (direction: Direction): void {
    const { from, to, cursor } = direction
    const resume = (): void => { from.resume() }
    from.on('data', (chunk: Buffer) => {
      if (direction.done) return
      let out = chunk
      let boundary = false
      if (this.#closeCode !== 0) {
        const passed = cursor.advance(chunk, true)
        boundary = cursor.atBoundary
        if (passed < chunk.length) out = chunk.subarray(0, passed)
      } else {
        cursor.advance(chunk, false)
      }
      if (out.length > 0 && !to.write(out) && !boundary) {
        from.pause()
        to.once('drain', resume)
      }
      if (boundary) this.#finish(direction)
    })
    from.on('end', () => {
      if (direction.done) return
      if (this.#closeCode === 0) to.end()
      else if (cursor.atBoundary) this.#finish(direction)
      else to.destroy() // the peer left in the middle of a frame: nothing whole can follow
    })
    from.on('error', () => {
      from.destroy()
      to.destroy()
    })
  }

  /** Sends our close frame after the last whole frame of this direction and ends it. */
  #finish (direction: Direction): void {
    direction.done = true
    const { from, to, toServer } = direction
    from.resume() // what it still sends (its answer to our close frame) is read and dropped
    if (to.destroyed || to.writableEnded) return
    to.end(closeFrame(toServer ? CLOSE_GOING_AWAY : this.#closeCode, toServer))
  }

  /** Bounds how long the sockets may linger once closing began or one side closed. */
  #destroyLater (): void {
    if (this.#timer !== undefined) return
    this.#timer = setTimeout(() => {
      this.#client.destroy()
      this.#upstream.destroy()
    }, CLOSE_WAIT_MS)
    this.#timer.unref()
  }
}
