import assert from 'node:assert/strict'
import { test } from 'node:test'
import { pino } from 'pino'
import { closeAll, every } from '../src/background.ts'

const log = pino({ level: 'silent' })

test('a periodic task: a failed run is counted and reported, the next run still comes, and stop() waits for a run under way', async () => {
  let runs = 0
  let failures = 0
  let release = (): void => {}
  let secondRun = (): void => {}
  const second = new Promise<void>((resolve) => { secondRun = resolve })
  const reported: unknown[] = []
  const task = every('a test task', async () => {
    runs++
    if (runs === 1) throw new Error('first run fails')
    secondRun()
    await new Promise<void>((resolve) => { release = resolve })
  }, { intervalMs: 1, immediately: true, log, failures: { inc: () => { failures++ } }, onError: (err) => reported.push(err) })
  await second
  assert.equal(failures, 1)
  assert.match(String(reported[0]), /first run fails/)
  let stopped = false
  const stopping = task.stop().then(() => { stopped = true })
  await Promise.resolve()
  assert.equal(stopped, false, 'stop() waits for the run under way')
  release()
  await stopping
  assert.equal(runs, 2)
})

test('closeAll runs every step even when one fails, then names the failures', async () => {
  const ran: string[] = []
  await assert.rejects(closeAll([
    ['first', () => { ran.push('first') }],
    ['second', async () => { ran.push('second'); throw new Error('boom') }],
    ['third', () => { ran.push('third') }]
  ], log), (err: unknown) => err instanceof AggregateError && err.message === 'closing failed at second' && (err.errors[0] as Error).message === 'boom')
  assert.deepEqual(ran, ['first', 'second', 'third'])
})
