import type { AuditEntry } from '../rollout/store.ts'

/** Left-aligned columns, two spaces apart: the human tables of status, audit and watch. */
export function table (rows: string[][]): string {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => { widths[i] = Math.max(widths[i] ?? 0, cell.length) })
  return rows.map((row) => row.map((cell, i) => i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n')
}

/** `3.2s ago`, `4m ago`: how old a timestamp is. */
export function ago (at: number, now: number): string {
  const seconds = Math.max(0, (now - at) / 1000)
  if (seconds < 10) return `${seconds.toFixed(1)}s ago`
  if (seconds < 120) return `${Math.round(seconds)}s ago`
  if (seconds < 7200) return `${Math.round(seconds / 60)}m ago`
  return `${Math.round(seconds / 3600)}h ago`
}

/** An audit entry as a plain object: the JSON shape of `audit`, `status` and `watch`. */
export function entryJson (entry: AuditEntry): Record<string, string> {
  return { id: entry.id, ...entry.fields, time: timeOf(entry) }
}

/** When the entry was made: its `at` (ms or ISO time), else the stream id's time. */
function timeOf (entry: AuditEntry): string {
  const text = entry.fields.at ?? ''
  const at = /^\d+$/.test(text) ? Number(text) : Date.parse(text)
  return new Date(Number.isFinite(at) ? at : Number(entry.id.split('-')[0])).toISOString()
}

/** One line: `2026-11-25T14:03:01.000Z  set_percent  5 → 20  by alice@host (cli)  "reason"`. */
export function entryLine (entry: AuditEntry): string {
  const f = entry.fields
  const time = timeOf(entry)
  const change = f.old !== undefined && f.old !== '' ? `${f.old} → ${f.new ?? ''}` : f.new ?? ''
  const extra = [f.key === undefined ? '' : `key ${f.key}`, f.level === undefined ? '' : `level ${f.level}`].filter((s) => s !== '').join(', ')
  return `${time}  ${f.action ?? '?'}  ${change}  by ${f.by ?? '?'} (${f.source ?? '?'})${extra === '' ? '' : `  ${extra}`}${f.reason === undefined || f.reason === '' ? '' : `  "${f.reason}"`}`
}
