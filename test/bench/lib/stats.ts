/** The median of a list of numbers (NaN for none). */
export function median (values: number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] as number : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2
}

/** Relative spread of a list: (max - min) / median, a quick measure of noise between rounds. */
export function spread (values: number[]): number {
  if (values.length < 2) return 0
  return (Math.max(...values) - Math.min(...values)) / median(values)
}

/** A Markdown table from a header row and data rows. */
export function table (header: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}

export const fmt = {
  int: (n: number): string => Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '—',
  ms: (n: number): string => Number.isFinite(n) ? `${n.toFixed(2)} ms` : '—',
  mib: (bytes: number): string => Number.isFinite(bytes) && bytes > 0 ? `${(bytes / 1_048_576).toFixed(0)} MiB` : '—',
  ratio: (n: number): string => Number.isFinite(n) ? `${n.toFixed(2)}×` : '—',
  pct: (n: number): string => Number.isFinite(n) ? `${(n * 100).toFixed(0)}%` : '—'
}
