import { unwrap } from '../control/results.ts'
import type { CliContext } from './context.ts'

/** `dbshift allow|deny add|rm|ls [user]`: the override sets. */
export async function members (ctx: CliContext, set: 'allow' | 'deny', op: 'add' | 'rm' | 'ls', user: string | undefined): Promise<void> {
  if (op === 'ls') {
    const users = await ctx.store.listMembers(set)
    ctx.print(users.length === 0 ? `the ${set}-set is empty` : users.join('\n'), { set, users })
    return
  }
  const changed = unwrap(await ctx.control.changeMember(set, op, user, ctx.actor)).status === 'ok'
  const meaning = set === 'allow' ? 'always migrated' : 'always legacy'
  const human = op === 'add'
    ? changed ? `added ${user} to the ${set}-set (${meaning})` : `${user} was already in the ${set}-set`
    : changed ? `removed ${user} from the ${set}-set` : `${user} was not in the ${set}-set`
  ctx.print(human, { set, op, user, changed })
}
