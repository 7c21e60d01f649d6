import { isDeepStrictEqual, promisify } from 'node:util'
import { brotliDecompress, gunzip, inflate } from 'node:zlib'

/** One side of a shadow comparison: what a version answered. */
export interface Answer {
  status: number
  contentType: string
  contentEncoding: string
  body: Buffer
}

export interface Comparison {
  match: boolean
  /** Where the answers differ first: `status`, `body`, or a JSON path such as `items.3.total`. */
  where?: string
}

const DECODERS: Record<string, (body: Buffer) => Promise<Buffer>> = {
  gzip: promisify(gunzip),
  'x-gzip': promisify(gunzip),
  deflate: promisify(inflate),
  br: promisify(brotliDecompress)
}

/**
 * Compiles `ignorePaths` (dotted JSON paths; `*` stands for any key or array index, e.g. `meta.generatedAt`,
 * `items.*.updatedAt`) into the list of paths to drop before comparing.
 */
export function compileIgnore (paths: readonly string[]): string[][] {
  return paths.map((path) => path.replace(/^\$\.?/, '').split('.').filter((part) => part !== ''))
}

/**
 * Compares two answers: the status, then the body. JSON bodies are compared structurally (key order and
 * spacing do not matter) without the ignored paths; other bodies byte for byte, after undoing any
 * content-encoding. HEAD answers have no body to compare.
 */
export async function compareAnswers (a: Answer, b: Answer, ignore: string[][], method: string): Promise<Comparison> {
  if (a.status !== b.status) return { match: false, where: 'status' }
  if (method === 'HEAD') return { match: true }
  const [left, right] = await Promise.all([decode(a), decode(b)])
  if (isJson(a.contentType) && isJson(b.contentType)) {
    const parsed = [parseJson(left), parseJson(right)]
    if (parsed[0] !== undefined && parsed[1] !== undefined) {
      const x = parsed[0].value
      const y = parsed[1].value
      for (const path of ignore) {
        drop(x, path)
        drop(y, path)
      }
      if (isDeepStrictEqual(x, y)) return { match: true }
      return { match: false, where: firstDifference(x, y, '') || 'body' }
    }
  }
  return left.equals(right) ? { match: true } : { match: false, where: 'body' }
}

async function decode (answer: Answer): Promise<Buffer> {
  const decoder = DECODERS[answer.contentEncoding.trim().toLowerCase()]
  return decoder === undefined ? answer.body : await decoder(answer.body)
}

function isJson (contentType: string): boolean {
  return /^application\/([\w.+-]*\+)?json\b/i.test(contentType.trim())
}

function parseJson (body: Buffer): { value: unknown } | undefined {
  try {
    return { value: JSON.parse(body.toString('utf8')) }
  } catch {
    return undefined
  }
}

/** Removes one path (with `*` wildcards) from a parsed JSON value, in place. */
function drop (node: unknown, path: string[]): void {
  if (node === null || typeof node !== 'object' || path.length === 0) return
  const [head, ...rest] = path as [string, ...string[]]
  const record = node as Record<string, unknown>
  const names = head === '*' ? Object.keys(record) : Object.hasOwn(record, head) ? [head] : []
  for (const name of names) {
    if (rest.length === 0) {
      if (Array.isArray(node)) record[name] = null // keep the indexes of the other items
      else delete record[name]
    } else {
      drop(record[name], rest)
    }
  }
}

/** The dotted path of the first difference between two JSON values ('' when none is found). */
function firstDifference (x: unknown, y: unknown, path: string): string {
  if (isDeepStrictEqual(x, y)) return ''
  if (x === null || y === null || typeof x !== 'object' || typeof y !== 'object' || Array.isArray(x) !== Array.isArray(y)) return path || '(root)'
  const a = x as Record<string, unknown>
  const b = y as Record<string, unknown>
  for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const found = firstDifference(a[key], b[key], path === '' ? key : `${path}.${key}`)
    if (found !== '') return found
  }
  return path || '(root)'
}
