import { readFileSync, realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Command, CommanderError, Option } from 'commander'
import { InvalidValueError } from '../errors.ts'
import { parseDuration, DURATION_RULE } from '../rollout/schedule.ts'
import { audit } from './audit.ts'
import { openContext, type CliContext, type GlobalOptions } from './context.ts'
import { parseDialArg, parsePercentArg, rollback, resume, set, setDials } from './dial.ts'
import { members } from './members.ts'
import { controlRamp, parseRampArgs, RAMP_VERBS, showRamp, startRamp, type RampVerb } from './ramp.ts'
import { status } from './status.ts'
import { releaseFence, showFence, wayBack } from './way-back.ts'
import { watch } from './watch.ts'
import { checkUser, which } from './which.ts'

/** Exit statuses: documented in docs/command-line.md ("Exit status"). */
export const EXIT = { ok: 0, failed: 1, badInput: 2, refused: 3, unconfirmed: 4, noInstances: 5 } as const

const EXIT_BY_CODE: Record<string, number> = {
  DBSHIFT_ERR_INVALID_VALUE: EXIT.badInput,
  DBSHIFT_ERR_CONFIG: EXIT.badInput,
  DBSHIFT_ERR_RAMP_FROZEN: EXIT.refused,
  DBSHIFT_ERR_CONFLICT: EXIT.refused,
  DBSHIFT_ERR_POOL_UNHEALTHY: EXIT.refused,
  DBSHIFT_ERR_WAY_BACK_NOT_READY: EXIT.refused,
  DBSHIFT_ERR_NO_WAY_BACK: EXIT.refused,
  DBSHIFT_ERR_NO_INSTANCES: EXIT.noInstances,
  DBSHIFT_ERR_REDIS_UNAVAILABLE: EXIT.failed
}

/** Runs the command line; resolves to the exit status. */
export async function run (argv: string[]): Promise<number> {
  const program = new Command('dbshift')
  program
    .description('Operate a dbshift rollout from the command line: it works on Redis directly and records every change in the audit stream.')
    .addOption(new Option('--rollout <name>', 'rollout name (default: rollout.name of the config file, DBSHIFT_ROLLOUT, or "default")'))
    .addOption(new Option('--redis <url>', 'Redis URL (default: REDIS_URL, or redis.url of the config file)'))
    .addOption(new Option('--prefix <prefix>', 'key prefix (default: redis.prefix of the config file, or "dbshift")'))
    .addOption(new Option('--by <name>', 'who the audit trail names (default: DBSHIFT_OPERATOR, or user@host)'))
    .option('--json', 'print JSON (one object per line) instead of text')
    .option('--force', 'change the rollout even when no live instance follows it (while other rollouts have some)')
    .version(version(), '-V, --version')
    .showHelpAfterError('(run "dbshift --help" for the verbs)')
    .exitOverride()
    .configureOutput({ writeErr: (text) => process.stderr.write(text) })

  let exit: number = EXIT.ok
  const withContext = async (work: (ctx: CliContext) => Promise<void>): Promise<void> => {
    const ctx = await openContext(program.opts<GlobalOptions>())
    try {
      await work(ctx)
    } finally {
      await ctx.close()
    }
  }

  program.command('status').description('percentage, state, trip, freeze, ramp, last change, and every instance (flagging those behind)')
    .action(async () => { await withContext(status) })

  const WAIT_HELP = 'then wait (default 5s) until every instance reports that it applies the change; exit 4 if not'
  const waitOf = (wait: string | boolean | undefined): number | undefined => {
    if (wait === undefined || wait === false) return undefined
    const ms = wait === true ? 5_000 : parseDuration(wait)
    if (ms === undefined || ms < 100 || ms > 600_000) throw new InvalidValueError(`--wait "${String(wait)}" must be a duration from 100ms to 10m, e.g. --wait 10s`)
    return ms
  }
  const confirmed = (ok: boolean): void => { if (!ok) exit = EXIT.unconfirmed }

  program.command('set').argument('[percent]', '0 to 100, at most two decimals').description('set the rollout percentage, the write dial or a route\'s dial')
    .option('--writes <percent>', 'the write dial: writes are migrated below min(writes, percent); "follow" deletes it')
    .option('--route <name=percent>', 'a route\'s own dial (routes in the config); "<name>=follow" deletes it', (text: string, list: string[]) => [...list, text], [])
    .option('--reason <text>', 'why, for the audit trail', '')
    .option('--wait [duration]', WAIT_HELP)
    .action(async (text: string | undefined, opts: { writes?: string, route: string[], reason: string, wait?: string | boolean }) => {
      const percent = text === undefined ? undefined : parsePercentArg(text)
      const dials = [...(opts.writes === undefined ? [] : [parseDialArg('--writes', opts.writes)]), ...opts.route.map((route) => parseDialArg('--route', route))]
      if (percent === undefined && dials.length === 0) throw new InvalidValueError('set needs a percentage, --writes or --route, e.g. dbshift set 20 or dbshift set --writes 5')
      const waitMs = waitOf(opts.wait)
      await withContext(async (ctx) => {
        confirmed(dials.length === 0 ? await set(ctx, percent as number, opts.reason, waitMs) : await setDials(ctx, percent, dials, opts.reason, waitMs))
      })
    })

  program.command('way-back').argument('[mode]', 'dual_write, reverse_sync or none')
    .description('how the data gets back to legacy on a rollback: show it (with whether a rollback now is safe), or declare it')
    .option('--reason <text>', 'why, for the audit trail', '')
    .action(async (mode: string | undefined, opts: { reason: string }) => {
      await withContext(async (ctx) => { await wayBack(ctx, mode, opts.reason) })
    })

  program.command('fence').argument('[op]', 'release').description('the fence on the moving cohort\'s writes: show it, or release it by hand')
    .option('--reason <text>', 'why (release), for the audit trail', '')
    .action(async (op: string | undefined, opts: { reason: string }) => {
      if (op !== undefined && op !== 'release') throw new InvalidValueError(`"${op}" is not an operation: use dbshift fence, or dbshift fence release [--reason]`)
      await withContext(async (ctx) => { await (op === 'release' ? releaseFence(ctx, opts.reason) : showFence(ctx)) })
    })

  program.command('rollback').description('send everyone to legacy, fleet-wide, now (--force: also with no way back)')
    .option('--reason <text>', 'why, for the trip and the audit trail', '')
    .option('--wait [duration]', WAIT_HELP)
    .action(async (opts: { reason: string, wait?: string | boolean }) => {
      const waitMs = waitOf(opts.wait)
      await withContext(async (ctx) => { confirmed(await rollback(ctx, opts.reason, waitMs)) })
    })

  program.command('resume').description('re-arm the rollout after a rollback: it follows the percentage again')
    .option('--reason <text>', 'why, for the audit trail', '')
    .option('--wait [duration]', WAIT_HELP)
    .action(async (opts: { reason: string, wait?: string | boolean }) => {
      const waitMs = waitOf(opts.wait)
      await withContext(async (ctx) => { confirmed(await resume(ctx, opts.reason, waitMs)) })
    })

  program.command('which').argument('<user>', 'the user key (as in the X-User-ID header)').description('which version a user gets, the bucket and why')
    .action(async (user: string) => {
      checkUser(user)
      await withContext(async (ctx) => { await which(ctx, user) })
    })

  for (const set of ['allow', 'deny'] as const) {
    program.command(set).argument('<op>', 'add, rm or ls').argument('[user]', 'the user key')
      .description(set === 'allow' ? 'the allow-set: users always on migrated (unless rolled back)' : 'the deny-set: users always on legacy')
      .action(async (op: string, user: string | undefined) => {
        if (op !== 'add' && op !== 'rm' && op !== 'ls') throw new InvalidValueError(`"${op}" is not an operation: use ${set} add <user>, ${set} rm <user> or ${set} ls`)
        if (op !== 'ls') {
          if (user === undefined || user === '') throw new InvalidValueError(`${set} ${op} needs a user key, e.g. dbshift ${set} ${op} alice`)
          checkUser(user)
        }
        await withContext(async (ctx) => { await members(ctx, set, op, user) })
      })
  }

  program.command('watch').description('follow every change and the fleet\'s per-version rates, live (Ctrl-C to stop)')
    .option('--interval <duration>', 'how often the rates are printed', '5s')
    .option('--count <n>', 'stop after this many changes')
    .action(async (opts: { interval: string, count?: string }) => {
      const intervalMs = parseDuration(opts.interval)
      if (intervalMs === undefined || intervalMs < 100) throw new InvalidValueError(`--interval "${opts.interval}" must be ${DURATION_RULE}, at least 100ms`)
      const count = opts.count === undefined ? undefined : positive(opts.count, '--count')
      await withContext(async (ctx) => { await watch(ctx, { intervalMs, count }) })
    })

  program.command('audit').description('the last changes, newest first (who, what, old and new value, why, from where)')
    .option('--count <n>', 'how many', '20')
    .action(async (opts: { count: string }) => {
      const count = positive(opts.count, '--count')
      await withContext(async (ctx) => { await audit(ctx, count) })
    })

  program.command('ramp').argument('[steps...]', 'percentages (each optionally with its own bake, e.g. 20:48h), or pause, continue, abort')
    .description('start a ramp schedule (e.g. ramp 1 5 20:48h 50 100 --bake 30m), control it, or show it')
    .option('--bake <duration>', 'how long each step bakes healthy before the next', '30m')
    .option('--reason <text>', 'why (pause, continue, abort)', '')
    .action(async (args: string[], opts: { bake: string, reason: string }) => {
      const [first] = args
      if (first === undefined) return await withContext(showRamp)
      if ((RAMP_VERBS as readonly string[]).includes(first)) {
        if (args.length > 1) throw new InvalidValueError(`ramp ${first} takes no further arguments`)
        return await withContext(async (ctx) => { await controlRamp(ctx, first as RampVerb, opts.reason) })
      }
      const steps = parseRampArgs(args, opts.bake)
      await withContext(async (ctx) => { await startRamp(ctx, steps) })
    })

  const json = argv.includes('--json')
  try {
    await program.parseAsync(argv, { from: 'user' })
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not failures; a usage error (unknown verb, missing argument) is bad input.
      return err.exitCode === 0 ? EXIT.ok : EXIT.badInput
    }
    const code = (err as { code?: string }).code ?? 'DBSHIFT_ERR_FAILED'
    const message = (err as Error).message
    exit = EXIT_BY_CODE[code] ?? EXIT.failed
    process.stderr.write(`dbshift: ${message}\n`)
    if (json) process.stdout.write(`${JSON.stringify({ error: code, message })}\n`)
  }
  return exit
}

/** The package's version (src/cli and dist/cli are both two levels below package.json). */
function version (): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
  } catch {
    return 'unknown'
  }
}

function positive (text: string, name: string): number {
  const n = Number(text)
  if (!Number.isInteger(n) || n < 1 || n > 10_000) throw new InvalidValueError(`${name} "${text}" must be a whole number from 1 to 10000`)
  return n
}

// Run when executed (also through a symlink such as node_modules/.bin/dbshift), not when imported.
const entry = process.argv[1] === undefined ? '' : realpathSync(process.argv[1])
if (entry === fileURLToPath(import.meta.url)) process.exitCode = await run(process.argv.slice(2))
