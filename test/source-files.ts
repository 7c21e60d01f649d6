import { readdirSync } from 'node:fs'
import { join } from 'node:path'

/** Every .ts file under `dir`, for the tests that check the shape of the code. */
export function sourceFiles (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    return entry.isDirectory() ? sourceFiles(path) : entry.name.endsWith('.ts') ? [path] : []
  })
}
