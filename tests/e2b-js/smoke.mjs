// The E2B JavaScript SDK, unmodified, against a tryfleet gateway: E2B_API_URL and
// E2B_SANDBOX_URL name the gateway, E2B_API_KEY is a tryfleet key (E2B_OTHER_KEY: another
// tenant's). Prints one JSON line per step; exits non-zero at the first step that fails.
import { Sandbox, CommandExitError, NotFoundError, SandboxNotFoundError } from 'e2b'

const log = (step, value) => console.log(JSON.stringify({ step, value }))

const sbx = await Sandbox.create({ envs: { GREETING: 'hello' }, metadata: { suite: 'js' } })
log('create', sbx.sandboxId)

const chunks = []
const run = await sbx.commands.run('python3 -c "print(6*7)"; echo $GREETING',
  { onStdout: (d) => chunks.push(d) })
log('run', { stdout: run.stdout, exitCode: run.exitCode, chunks: chunks.length })

try {
  await sbx.commands.run('echo boom >&2; exit 7')
  log('nonzero', 'no error')
  process.exit(1)
} catch (err) {
  if (!(err instanceof CommandExitError)) throw err
  log('nonzero', { exitCode: err.exitCode, stderr: err.stderr })
}

const bg = await sbx.commands.run('sleep 60', { background: true })
const pids = (await sbx.commands.list()).map((p) => p.pid)
const whoami = (await sbx.commands.run('whoami')).stdout
log('background', { listed: pids.includes(bg.pid), whoami, killed: await bg.kill() })

const blob = new Uint8Array(70000).map((_, i) => (i * 7) % 256)
await sbx.files.write('/home/user/js/blob.bin', blob)
await sbx.files.write('js/hi.txt', 'hi from js')
const back = await sbx.files.read('/home/user/js/blob.bin', { format: 'bytes' })
log('files', {
  same: back.length === blob.length && back.every((b, i) => b === blob[i]),
  text: await sbx.files.read('js/hi.txt'),
  list: (await sbx.files.list('/home/user/js')).map((e) => [e.name, e.type, e.size]),
  exists: [await sbx.files.exists('js/hi.txt'), await sbx.files.exists('js/nope')],
})
await sbx.files.remove('/home/user/js/hi.txt')
log('removed', await sbx.files.exists('js/hi.txt'))

await sbx.setTimeout(600_000)
const info = await sbx.getInfo()
log('info', { id: info.sandboxId, template: info.templateId, metadata: info.metadata,
  state: info.state, endsInS: Math.round((info.endAt - Date.now()) / 1000) })

const listed = await Sandbox.list({ query: { metadata: { suite: 'js' } } }).nextItems()
log('list', listed.map((s) => s.sandboxId))

if (process.env.E2B_OTHER_KEY) {
  const other = { apiKey: process.env.E2B_OTHER_KEY }
  let hidden = false
  try { await Sandbox.getInfo(sbx.sandboxId, other) } catch (err) {
    hidden = err instanceof SandboxNotFoundError || err instanceof NotFoundError
  }
  log('other-tenant', { hidden, killed: await Sandbox.kill(sbx.sandboxId, other) })
}

log('kill', await sbx.kill())
try {
  await sbx.commands.run('true')
  log('after-kill', 'no error')
  process.exit(1)
} catch (err) {
  log('after-kill', err.name)
}
