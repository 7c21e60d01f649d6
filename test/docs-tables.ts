import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'

/** A docs page (README.md or docs/<name>.md), read from the repository root. */
export function readDoc (path: string): string {
  return readFileSync(path, 'utf8')
}

/** The text under `heading` (e.g. "## Metrics") up to the next heading of the same or a higher level. */
export function section (text: string, heading: string): string {
  const level = /^#+/.exec(heading)?.[0].length ?? 2
  const lines = text.split('\n')
  const start = lines.indexOf(heading)
  assert.ok(start !== -1, `no "${heading}" heading`)
  const rest = lines.slice(start + 1)
  let inCode = false
  const end = rest.findIndex((line) => {
    if (line.startsWith('```')) inCode = !inCode
    const match = inCode ? null : /^(#+) /.exec(line)
    return match !== null && (match[1] as string).length <= level
  })
  return (end === -1 ? rest : rest.slice(0, end)).join('\n')
}

/** The cells of every table row in `text` that starts with a backticked first cell. */
export function rows (text: string): string[][] {
  return text.split('\n')
    .filter((line) => line.startsWith('| `'))
    .map((line) => line.slice(1, line.endsWith('|') ? -1 : undefined).split(/(?<!\\)\|/).map((cell) => cell.trim()))
}

/** The first cells of those rows, without backticks. */
export function firstCells (text: string): string[] {
  return rows(text).map((cells) => (cells[0] as string).replace(/`/g, ''))
}

/** Every `backticked` token of a cell, in order. */
export function ticked (cell: string): string[] {
  return [...cell.matchAll(/`([^`]+)`/g)].map((match) => match[1] as string)
}
