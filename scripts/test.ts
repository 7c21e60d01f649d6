/**
 * Runs the test files (`node --test`, two at a time) with a temp directory of the run's own, then:
 * every failure is printed again at the end (the spec reporter's summary, also when the output is not a terminal),
 * and anything a test left in the temp directory fails the run by name. The directory is removed afterwards.
 * Usage: node --import tsx scripts/test.ts test/*.test.ts
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const files = process.argv.slice(2)
const runTmp = mkdtempSync(join(tmpdir(), 'dbshift-test-run-'))
const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=2', '--test-reporter=spec', '--test-reporter-destination=stdout', ...files], {
  env: { ...process.env, TMPDIR: runTmp, TMP: runTmp, TEMP: runTmp },
  stdio: 'inherit'
})
const [code, signal] = await once(child, 'exit') as [number | null, NodeJS.Signals | null]

// tsx keeps its compile cache under the temp directory (tsx-<uid>): that one is the runner's, not a test's.
const left = readdirSync(runTmp).filter((name) => !/^tsx-\d+$/.test(name))
rmSync(runTmp, { recursive: true, force: true })
let status = code ?? 1
if (left.length > 0) {
  process.stdout.write(`\n✖ the tests left ${left.length} file(s) in the temp directory: ${left.join(', ')}\n`)
  status = status === 0 ? 1 : status
}
if (signal !== null) process.stdout.write(`\n✖ the test runner was stopped by ${signal}\n`)
process.exitCode = status
