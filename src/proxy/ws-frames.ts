import { randomFillSync } from 'node:crypto'

/**
 * The two things dbshift needs to know about WebSocket framing (RFC 6455 §5.2), and nothing more: where one frame
 * ends (so that a close frame is never put inside another frame) and how a close frame is written. Payloads are
 * never read, copied or unmasked: the relay only counts their length.
 */

/** Close codes dbshift sends (RFC 6455 §7.4.1 and the IANA registry). */
export const CLOSE_GOING_AWAY = 1001
export const CLOSE_SERVICE_RESTART = 1012

/**
 * A close frame with `code` and no reason. `masked` for frames sent to a server (§5.3: a client masks every
 * frame with a fresh unpredictable key); unmasked for frames sent to a client.
 */
export function closeFrame (code: number, masked: boolean): Buffer {
  if (!masked) return Buffer.from([0x88, 0x02, code >> 8, code & 0xff])
  const frame = Buffer.alloc(8)
  frame[0] = 0x88 // FIN + opcode 0x8 (close)
  frame[1] = 0x82 // mask bit + payload length 2
  randomFillSync(frame, 2, 4)
  frame[6] = (code >> 8) ^ (frame[2] as number)
  frame[7] = (code & 0xff) ^ (frame[3] as number)
  return frame
}

/**
 * Follows the frame boundaries of one direction of a WebSocket connection. A frame header (2 to 14 bytes) is
 * collected byte by byte, even across chunks; a payload is skipped by its length, so a 10 MB message costs one
 * subtraction per chunk.
 */
export class FrameCursor {
  /** Payload bytes of the current frame still to come. */
  #remaining = 0
  readonly #header = Buffer.alloc(14)
  /** Header bytes collected so far. */
  #have = 0

  /** True between two frames: a close frame may be sent now without breaking the stream. */
  get atBoundary (): boolean {
    return this.#remaining === 0 && this.#have === 0
  }

  /**
   * Moves over `chunk` and returns how many of its bytes were passed: all of them, or, with `stopAtBoundary`, the
   * bytes up to the first frame boundary (0 when already at one).
   */
  advance (chunk: Buffer, stopAtBoundary: boolean): number {
    const n = chunk.length
    let i = 0
    while (i < n) {
      if (stopAtBoundary && this.atBoundary) return i
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, n - i)
        this.#remaining -= take
        i += take
        continue
      }
      this.#header[this.#have++] = chunk[i++] as number
      if (this.#have >= 2 && this.#have === headerLength(this.#header)) {
        this.#remaining = payloadLength(this.#header)
        this.#have = 0
      }
    }
    return i
  }
}

/** The whole header's length, from its second byte: the extended length field and the masking key. */
function headerLength (header: Buffer): number {
  const b1 = header[1] as number
  const len7 = b1 & 0x7f
  return 2 + (len7 === 126 ? 2 : len7 === 127 ? 8 : 0) + ((b1 & 0x80) !== 0 ? 4 : 0)
}

function payloadLength (header: Buffer): number {
  const len7 = (header[1] as number) & 0x7f
  if (len7 < 126) return len7
  if (len7 === 126) return header.readUInt16BE(2)
  return Number(header.readBigUInt64BE(2)) // §5.2: the most significant bit is 0, so at most 2^63 - 1
}
