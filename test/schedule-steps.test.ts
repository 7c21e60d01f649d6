import assert from 'node:assert/strict'
import { test } from 'node:test'
import { describePlan, parseDuration, parseSteps } from '../src/rollout/schedule.ts'

const H = 3_600_000

test('ramp steps: percentages with an optional bake of their own, rising', () => {
  assert.deepEqual(parseSteps(['1', '5', '20:48h', '50', '100'], '30m'), [
    { percent: 1, bakeMs: 0.5 * H }, { percent: 5, bakeMs: 0.5 * H }, { percent: 20, bakeMs: 48 * H }, { percent: 50, bakeMs: 0.5 * H }, { percent: 100, bakeMs: 0.5 * H }
  ])
  assert.deepEqual(parseSteps(['0.5', '12.25:90s'], '2d'), [{ percent: 0.5, bakeMs: 48 * H }, { percent: 12.25, bakeMs: 90_000 }])
  assert.equal(describePlan(parseSteps(['1', '5', '20:48h', '50', '100'], '30m') as never), '1% → 5% → 20% (2d) → 50% → 100%, bake 30m')
})

test('ramp steps: each mistake is named with what is allowed', () => {
  assert.equal(parseSteps([], '30m'), 'give at least one step, e.g. dbshift ramp 1 5 20 50 100 --bake 30m')
  assert.match(parseSteps(['1', '150'], '30m') as string, /^step "150": the percentage must be a number from 0 to 100 with at most two decimals/)
  assert.match(parseSteps(['20.555'], '30m') as string, /^step "20\.555": the percentage must be/)
  assert.match(parseSteps(['20:48h:x'], '30m') as string, /^step "20:48h:x": the percentage must be/)
  assert.equal(parseSteps(['5', '5'], '30m'), 'step "5": steps must rise (5% came before it)')
  assert.equal(parseSteps(['20', '10'], '30m'), 'step "10": steps must rise (20% came before it)')
  assert.match(parseSteps(['1', '5:soon'], '30m') as string, /^step "5:soon": the bake must be a duration such as 500ms, 90s, 30m, 48h or 2d \(at most 30d\)$/)
  assert.match(parseSteps(['1'], 'forever') as string, /^--bake "forever" must be a duration/)
})

test('durations: ms, s, m, h and d; nothing else, nothing negative, nothing beyond 30 days', () => {
  assert.equal(parseDuration('500ms'), 500)
  assert.equal(parseDuration('90s'), 90_000)
  assert.equal(parseDuration('30m'), 1_800_000)
  assert.equal(parseDuration('48h'), 48 * H)
  assert.equal(parseDuration('1.5h'), 1.5 * H)
  assert.equal(parseDuration('30d'), 720 * H)
  for (const bad of ['31d', '-5m', '5', 'm', '5 minutes', '1h30m', '', '5x']) assert.equal(parseDuration(bad), undefined, bad)
})

test('ramp steps that step reads and writes: reads/writes, each dial rising or held, writes never ahead of reads', () => {
  assert.deepEqual(parseSteps(['5/0', '20/5:48h', '50/5', '50/50', '100'], '30m'), [
    { percent: 5, writePercent: 0, bakeMs: 0.5 * H }, { percent: 20, writePercent: 5, bakeMs: 48 * H }, { percent: 50, writePercent: 5, bakeMs: 0.5 * H },
    { percent: 50, writePercent: 50, bakeMs: 0.5 * H }, { percent: 100, bakeMs: 0.5 * H }
  ])
  assert.equal(describePlan(parseSteps(['5/0', '20/5', '50/50'], '30m') as never), 'reads 5% writes 0% → reads 20% writes 5% → reads 50% writes 50%, bake 30m')
  assert.equal(parseSteps(['20/30'], '30m'), 'step "20/30": writes cannot go ahead of reads (30% > 20%)')
  assert.equal(parseSteps(['20/5', '50/2'], '30m'), 'step "50/2": the write dial must not fall (writes 5% came before it)')
  assert.equal(parseSteps(['20/5', '20/5'], '30m'), 'step "20/5": steps must rise (20% came before it)')
  assert.equal(parseSteps(['20/5', '10/5'], '30m'), 'step "10/5": steps must rise (20% came before it)')
  assert.match(parseSteps(['20/x'], '30m') as string, /^step "20\/x": the write dial after "\/" must be a number from 0 to 100/)
  assert.match(parseSteps(['20/5/1'], '30m') as string, /^step "20\/5\/1": the percentage must be .* optionally followed by \/<writes> and :<bake>/)
})
