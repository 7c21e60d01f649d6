import { execFile } from 'node:child_process'

const MISSING = 'promtool is not on PATH. Install it (Debian/Ubuntu: `apt-get install prometheus`, which ships promtool) ' +
  'or run `bash .ci/run`, which installs it.'

/** Runs promtool with `args` (and `input` on stdin); rejects with how to install it when it is missing. */
export async function promtool (args: string[], input?: string): Promise<{ code: number, output: string }> {
  return await new Promise((resolve, reject) => {
    const child = execFile('promtool', args, { timeout: 60_000 }, (err, stdout, stderr) => {
      const code = (err as NodeJS.ErrnoException | null)?.code
      if (code === 'ENOENT') return reject(new Error(MISSING))
      resolve({ code: err === null ? 0 : typeof code === 'number' ? code : 1, output: `${stdout}${stderr}` })
    })
    if (input !== undefined) child.stdin?.end(input)
  })
}
