#!/usr/bin/env node
// The dbshift command: runs the compiled CLI (npm install builds dist/ through the prepare script).
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const main = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cli', 'main.js')
if (!existsSync(main)) {
  process.stderr.write('dbshift: the command is not built yet: run "npm install" (or "npm run build") in the dbshift checkout\n')
  process.exit(1)
}
const { run } = await import(main)
process.exitCode = await run(process.argv.slice(2))
