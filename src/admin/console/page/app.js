/* global uPlot, document, window, sessionStorage, fetch, getComputedStyle, ResizeObserver */
// The operator console. It reads the admin API every few seconds and changes nothing except through the admin
// API's own routes, with the token typed into the page (kept in sessionStorage, sent as a bearer header, never a
// cookie: a forged cross-site request carries no token and can do nothing).

const TOKEN_KEY = 'dbshift.token'
const POLL_MS = 2_000
const HISTORY_POLL_MS = 5_000
const VERSIONS = ['legacy', 'migrated']

const $ = (selector) => document.querySelector(selector)

/** Builds an element; children are nodes or text (never parsed as HTML: audit reasons and user keys are input). */
function el (tag, props = {}, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value
    else if (key === 'dataset') Object.assign(node.dataset, value)
    else node.setAttribute(key, value)
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue
    node.append(child instanceof window.Node ? child : String(child))
  }
  return node
}

function token () {
  return sessionStorage.getItem(TOKEN_KEY) ?? ''
}

/** One admin API call. Cookies are never sent or accepted (credentials: omit). */
async function api (method, path, body) {
  const headers = { accept: 'application/json' }
  if (token() !== '') headers.authorization = `Bearer ${token()}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  let res
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'omit', cache: 'no-store' })
  } catch (err) {
    return { ok: false, status: 0, data: { error: 'NETWORK', message: `the admin port did not answer (${err.message})` } }
  }
  let data = {}
  try {
    data = await res.json()
  } catch {}
  if (res.status === 401 && method === 'GET') $('#need-token').hidden = false
  return { ok: res.ok, status: res.status, data }
}

// ---- formatting

const pct = (ratio) => `${(Math.round(ratio * 1000) / 10).toFixed(1)}%`
const num = (value, digits = 2) => value === null || value === undefined ? '–' : String(Math.round(value * 10 ** digits) / 10 ** digits)
function when (value) {
  if (value === null || value === undefined || value === '') return '–'
  const date = new Date(/^\d+$/.test(String(value)) ? Number(value) : value)
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' })
}
function span (ms) {
  if (ms >= 86_400_000 && ms % 3_600_000 === 0) return ms % 86_400_000 === 0 ? `${ms / 86_400_000} d` : `${ms / 3_600_000} h`
  if (ms >= 3_600_000 && ms % 60_000 === 0) return ms % 3_600_000 === 0 ? `${ms / 3_600_000} h` : `${Math.round(ms / 60_000)} min`
  if (ms >= 60_000) return `${Math.round(ms / 60_000)} min`
  return `${Math.round(ms / 1000)} s`
}
function pick (object, ...names) {
  for (const name of names) if (object?.[name] !== undefined && object[name] !== null) return object[name]
  return undefined
}
function describe (value) {
  if (value === null || value === undefined) return '–'
  if (typeof value !== 'object') return String(value)
  return Object.entries(value).map(([k, v]) => `${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : v}`).join(', ')
}

// ---- dials

function renderStatus (status) {
  $('#rollout-name').textContent = status.rollout ?? ''
  $('#instance').textContent = status.instance ?? ''
  const rows = []
  const add = (name, value, cls = '') => rows.push(el('div', { class: `dial ${cls}`, dataset: { dial: name } }, el('dt', {}, name), el('dd', {}, value)))
  add('percent', `${status.percent}%`, 'big')
  const writePercent = pick(status, 'writePercent', 'write_percent')
  if (writePercent !== undefined) add('write percent', `${writePercent}%`)
  const routes = pick(status, 'routes', 'routeDials')
  if (routes !== undefined) {
    const list = Array.isArray(routes) ? routes : Object.entries(routes).map(([name, value]) => typeof value === 'object' ? { name, ...value } : { name, percent: value })
    for (const route of list) add(`route ${route.name}`, route.percent === undefined || route.percent === null ? (route.mode ?? 'follows percent') : `${route.percent}%`)
  }
  add('state', status.state, status.state === 'rolled_back' ? 'bad' : 'good')
  if (status.trip) add('trip', `${status.trip.level}: ${status.trip.reason} (${status.trip.by}, ${when(status.trip.at)})`, 'bad')
  const freeze = pick(status, 'freeze', 'frozen') ?? lastFreeze
  const l2 = status.guards?.l2
  if (freeze !== undefined && freeze !== false) add('freeze', `frozen: ${describe(freeze)} (raises are refused)`, 'warn')
  else if (l2?.paused === true) add('freeze', `frozen by L2: ${l2.reason ?? ''}`, 'warn')
  else add('freeze', 'not frozen')
  const wayBack = pick(status, 'wayBack', 'way_back')
  if (wayBack !== undefined) add('way back', describe(wayBack))
  const fence = pick(status, 'fence')
  if (fence !== undefined) add('fence', describe(fence), 'warn')
  add('overrides', `allow ${status.allow}, deny ${status.deny}`)
  add('Redis', status.redis?.connected ? 'connected' : 'disconnected', status.redis?.connected ? '' : 'bad')
  $('#dial-list').replaceChildren(...rows)

  const rates = VERSIONS.map((version) => {
    const t = status.traffic?.[version] ?? {}
    return el('div', { class: `rate ${version}`, dataset: { version } },
      el('strong', {}, version), ' ',
      el('span', { class: 'rps' }, `${num(t.requestsPerSecond)} req/s`), ' · ',
      el('span', { class: 'err' }, `${pct(t.errorRate ?? 0)} errors`),
      el('span', { class: 'muted small' }, ` (last ${status.traffic?.windowSeconds ?? 60} s)`))
  })
  $('#rates').replaceChildren(...rates)
}

// ---- guards, pools

/** The freeze as Redis holds it, from the last /console/overview (null: none). */
let lastFreeze

function renderOverview (overview) {
  lastFreeze = overview.freeze ?? undefined
  const cards = overview.guards.map((g) => el('article', { class: `guard ${g.acting ? 'acting' : ''} ${g.enabled ? '' : 'off'}`, dataset: { level: g.level } },
    el('h3', {}, `${g.level} · ${g.name} `,
      el('span', { class: `badge ${g.enabled ? 'on' : ''}` }, g.enabled ? 'enabled' : 'disabled'), ' ',
      g.dryRun ? el('span', { class: 'badge warn' }, 'dry run') : null),
    el('p', { class: 'sentence' }, g.sentence),
    el('dl', { class: 'facts' },
      el('dt', {}, 'threshold'), el('dd', {}, g.threshold),
      el('dt', {}, 'now'), el('dd', {}, g.current),
      el('dt', {}, 'minimum sample'), el('dd', {}, g.minSample))))
  $('#guard-list').replaceChildren(...cards)
  $('#pool-list').replaceChildren(...VERSIONS.map((version) => el('div', { class: 'pool', dataset: { version } },
    el('h3', {}, version),
    el('ul', {}, overview.pools[version].map((member) => el('li', {}, member))))))
}

function renderPoolHealth (status) {
  // Shown when /status reports member health (pool health checks); otherwise the members as configured.
  const pools = status.pools
  if (pools === undefined || pools === null) return
  for (const version of VERSIONS) {
    const members = pools[version]?.members ?? pools[version]
    if (!Array.isArray(members)) continue
    const list = document.querySelector(`#pool-list [data-version="${version}"] ul`)
    if (list === null) continue
    list.replaceChildren(...members.map((m) => typeof m === 'object'
      ? el('li', { class: m.healthy === false ? 'bad' : '' }, `${m.member ?? m.url ?? ''} · ${m.healthy === false ? 'unhealthy' : 'healthy'}${m.ejected || m.ejectedUntil ? ' (ejected)' : ''}${m.check === 'down' ? ' (check failing)' : ''}`)
      : el('li', {}, m)))
  }
}

// ---- fleet

function renderFleet (result) {
  const body = $('#fleet-table tbody')
  if (!result.ok) {
    $('#fleet-summary').textContent = `(${result.data.message ?? result.status})`
    body.replaceChildren()
    return
  }
  const { instances, behind } = result.data
  $('#fleet-summary').textContent = `${instances.length} instance${instances.length === 1 ? '' : 's'}${behind > 0 ? `, ${behind} lagging` : ', all in step'}`
  body.replaceChildren(...instances.map((m) => el('tr', { class: m.behind === null ? '' : 'lagging', dataset: { instance: m.id } },
    el('td', {}, m.id),
    el('td', {}, `${m.percent}%`),
    el('td', {}, m.state),
    el('td', {}, `${num(m.traffic?.legacy?.rps, 1)} / ${num(m.traffic?.migrated?.rps, 1)}`),
    el('td', { class: 'wrap' }, m.behind === null ? 'yes' : el('span', { class: 'badge bad' }, `lagging: ${m.behind}`)))))
}

// ---- ramp

/** `20%`, or `reads 20% · writes 5%` for a step that sets the write dial too. */
function dials (step) {
  return step.writePercent === undefined ? `${step.percent}%` : `reads ${step.percent}% · writes ${step.writePercent}%`
}

function renderSchedule (result) {
  const list = $('#ramp-steps-list')
  if (!result.ok) {
    $('#ramp-progress').textContent = result.data.message ?? `unavailable (${result.status})`
    return
  }
  const schedule = result.data.schedule
  if (schedule === null) {
    $('#ramp-progress').textContent = 'no ramp schedule'
    list.replaceChildren()
    $('#ramp-next').textContent = ''
    return
  }
  $('#ramp-progress').textContent = schedule.progress
  list.replaceChildren(...schedule.steps.map((step, i) => {
    const state = schedule.status === 'done' || i < schedule.step ? 'done' : i === schedule.step ? 'current' : 'pending'
    return el('li', { class: state }, `${dials(step)} · bake ${span(step.bakeMs)}`)
  }))
  const step = schedule.steps[schedule.step]
  const next = schedule.steps[schedule.step + 1]
  if (schedule.status === 'running' && step !== undefined && next !== undefined && schedule.bakeFrom !== null) {
    $('#ramp-next').textContent = `next step: ${dials(next)} at ${when(schedule.bakeFrom + step.bakeMs)} if the bake stays healthy`
  } else {
    $('#ramp-next').textContent = ''
  }
}

// ---- audit

let auditEntries = []

function renderAudit () {
  const filter = $('#audit-filter').value.trim().toLowerCase()
  const action = $('#audit-action').value
  const rows = auditEntries.filter((e) => (action === '' || e.action === action) &&
    (filter === '' || [e.action, e.old, e.new, e.by, e.source, e.reason].join(' ').toLowerCase().includes(filter)))
  $('#audit-table tbody').replaceChildren(...rows.map((e) => el('tr', { dataset: { action: e.action } },
    el('td', {}, when(e.at)),
    el('td', {}, e.action),
    el('td', { class: 'wrap' }, `${e.old || '–'} → ${e.new || '–'}`),
    el('td', {}, `${e.by ?? ''}${e.source ? ` (${e.source})` : ''}`),
    el('td', { class: 'wrap' }, e.reason ?? ''))))
}

function updateAudit (result) {
  if (!result.ok) {
    $('#last-change').textContent = `audit trail: ${result.data.message ?? result.status}`
    return
  }
  auditEntries = result.data.entries
  const select = $('#audit-action')
  const actions = [...new Set(auditEntries.map((e) => e.action))].sort()
  const known = [...select.options].map((o) => o.value)
  for (const a of actions) if (!known.includes(a)) select.append(el('option', { value: a }, a))
  const last = auditEntries[0]
  $('#last-change').textContent = last === undefined
    ? 'no change recorded yet'
    : `last change: ${last.action} ${last.old || '–'} → ${last.new || '–'} by ${last.by} (${last.source}) at ${when(last.at)}${last.reason ? `: ${last.reason}` : ''}`
  renderAudit()
}

// ---- charts

const charts = {}

function palette () {
  const css = getComputedStyle(document.documentElement)
  const v = (name) => css.getPropertyValue(name).trim()
  return { fg: v('--fg'), grid: v('--grid'), legacy: v('--legacy'), migrated: v('--migrated'), limit: v('--limit') }
}

function makeChart (id, threshold, format) {
  const target = document.getElementById(id)
  const colors = palette()
  const axis = { stroke: colors.fg, grid: { stroke: colors.grid, width: 1 }, ticks: { stroke: colors.grid, width: 1 } }
  const series = [
    {},
    { label: 'legacy', stroke: colors.legacy, width: 2, value: (_u, v) => format(v) },
    { label: 'migrated', stroke: colors.migrated, width: 2, value: (_u, v) => format(v) }
  ]
  if (threshold !== undefined) series.push({ label: threshold, stroke: colors.limit, width: 1.5, dash: [6, 4], points: { show: false }, value: (_u, v) => format(v) })
  const chart = new uPlot({ // eslint-disable-line new-cap
    width: Math.max(200, target.clientWidth),
    height: 180,
    series,
    axes: [axis, { ...axis, size: 56, values: (_u, ticks) => ticks.map(format) }],
    scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(max * 1.1, min + 1e-6, threshold === undefined ? 1 : 0)] } },
    legend: { show: false }
  }, [[], [], [], ...(threshold === undefined ? [] : [[]])], target)
  // A legend of the page's own, under the chart: uPlot's is a table that does not wrap on a phone.
  target.after(el('p', { class: 'legend small' },
    el('span', { class: 'key legacy' }, 'legacy'), el('span', { class: 'key migrated' }, 'migrated'),
    threshold === undefined ? null : el('span', { class: 'key limit' }, threshold)))
  const resize = new ResizeObserver(() => chart.setSize({ width: Math.max(200, target.clientWidth), height: 180 }))
  resize.observe(target)
  return chart
}

let lastHistory

function renderHistory (history) {
  lastHistory = history
  const points = history.points
  const t = points.map((p) => p.at / 1000)
  const series = (field) => VERSIONS.map((version) => points.map((p) => p[version][field]))
  const line = (value) => points.map(() => value)
  const { errorRate, minRequestsPerSecond } = history.thresholds
  charts.rps ??= makeChart('chart-rps', minRequestsPerSecond === null ? undefined : `L1 minimum sample (${num(minRequestsPerSecond)} req/s)`, (v) => v === null ? '–' : num(v))
  charts.errors ??= makeChart('chart-errors', errorRate === null ? undefined : `L1 threshold (${pct(errorRate)})`, (v) => v === null ? '–' : pct(v))
  charts.p99 ??= makeChart('chart-p99', undefined, (v) => v === null ? '–' : `${num(v, 1)}`)
  charts.rps.setData([t, ...series('rps'), ...(minRequestsPerSecond === null ? [] : [line(minRequestsPerSecond)])])
  charts.errors.setData([t, ...series('errorRate'), ...(errorRate === null ? [] : [line(errorRate)])])
  charts.p99.setData([t, ...series('p99Ms')])
}

// The charts take their colours from the stylesheet: draw them again when the colour scheme changes.
window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  for (const key of Object.keys(charts)) {
    charts[key].destroy()
    delete charts[key]
  }
  if (lastHistory !== undefined) renderHistory(lastHistory)
})

// ---- polling

let pollCount = 0

async function refresh () {
  const [status, overview, fleet, schedule, audit] = await Promise.all([
    api('GET', '/status'), api('GET', '/console/overview'), api('GET', '/fleet'), api('GET', '/schedule'), api('GET', '/audit?count=200')
  ])
  const offline = $('#offline')
  if (overview.ok) renderOverview(overview.data)
  if (status.ok) {
    $('#need-token').hidden = true
    offline.hidden = true
    renderStatus(status.data)
    renderPoolHealth(status.data)
    $('#live').textContent = `live · updated ${new Date().toLocaleTimeString()}`
  } else if (status.status !== 401) {
    offline.hidden = false
    offline.textContent = `cannot read /status: ${status.data.message ?? status.status}`
  }
  renderFleet(fleet)
  renderSchedule(schedule)
  updateAudit(audit)
  pollCount++
  document.body.dataset.polls = String(pollCount)
}

async function refreshHistory () {
  const history = await api('GET', '/console/history')
  if (history.ok && typeof uPlot === 'function') renderHistory(history.data)
}

function loop (task, ms) {
  const run = () => task().catch((err) => { console.error(err) }).finally(() => { setTimeout(run, ms) })
  run()
}

// ---- token

function renderToken () {
  const has = token() !== ''
  $('#token-state').textContent = has ? 'token set' : 'read-only'
  $('#token-state').className = `badge ${has ? 'on' : ''}`
  $('#token-forget').hidden = !has
}

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const value = $('#token-input').value.trim()
  if (value !== '') sessionStorage.setItem(TOKEN_KEY, value)
  $('#token-input').value = ''
  renderToken()
  refresh().catch(() => {})
  refreshHistory().catch(() => {})
})
$('#token-forget').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY)
  renderToken()
})

// ---- actions

/** Asks for the reason of a change; resolves to the reason, or null when cancelled. */
function askReason (title) {
  const dialog = $('#reason-dialog')
  const input = $('#reason-input')
  $('#reason-title').textContent = title
  input.value = ''
  dialog.showModal()
  input.focus()
  return new Promise((resolve) => {
    const done = (value) => {
      $('#reason-form').removeEventListener('submit', onSubmit)
      $('#reason-cancel').removeEventListener('click', onCancel)
      dialog.removeEventListener('cancel', onCancel)
      dialog.close()
      resolve(value)
    }
    const onSubmit = (event) => {
      event.preventDefault()
      if (input.value.trim() !== '') done(input.value.trim())
    }
    const onCancel = (event) => {
      event.preventDefault()
      done(null)
    }
    $('#reason-form').addEventListener('submit', onSubmit)
    $('#reason-cancel').addEventListener('click', onCancel)
    dialog.addEventListener('cancel', onCancel)
  })
}

/** One change through the admin API: asks for a reason, sends it, and shows the answer (refusals with their code). */
async function act (title, method, path, body = {}, options = { reason: true }) {
  const result = $('#result')
  result.dataset.code = 'pending' // the answer shown is always this action's, never the one before
  const reason = await askReason(title)
  if (reason === null) {
    result.dataset.code = 'cancelled'
    result.textContent = `${title}: cancelled`
    return
  }
  result.className = 'result pending'
  result.textContent = `${title}…`
  const answer = await api(method, path, options.reason ? { ...body, reason } : body)
  if (answer.ok) {
    result.className = 'result ok'
    result.textContent = `✓ ${title}: ${answer.data.message ?? describe(answer.data)}`
  } else {
    result.className = 'result refused'
    result.textContent = `✗ ${title} refused (${answer.status} ${answer.data.error ?? ''}): ${answer.data.message ?? ''}`
  }
  result.dataset.code = answer.ok ? 'ok' : (answer.data.error ?? String(answer.status))
  await refresh()
}

$('#dial-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const percent = Number($('#dial-percent').value)
  act(`Set the dial to ${percent}%`, 'PUT', '/rollout', { percent }).catch(console.error)
})
$('#rollback').addEventListener('click', () => { act('Roll back', 'POST', '/rollback').catch(console.error) })
$('#resume').addEventListener('click', () => { act('Resume', 'POST', '/resume').catch(console.error) })
$('#ramp-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const steps = $('#ramp-steps').value.split(/[\s,]+/).filter((s) => s !== '').map((s) => /^\d+(\.\d+)?$/.test(s) ? Number(s) : s)
  // POST /schedule records who started the ramp; it takes no reason field.
  act(`Start a ramp to ${steps.join(' → ')}`, 'POST', '/schedule', { steps, bake: $('#ramp-bake').value.trim() }, { reason: false }).catch(console.error)
})
for (const button of document.querySelectorAll('[data-ramp]')) {
  const verb = button.dataset.ramp
  button.addEventListener('click', () => { act(`${verb[0].toUpperCase()}${verb.slice(1)} the ramp`, 'POST', `/schedule/${verb}`).catch(console.error) })
}
function member (op) {
  const user = $('#member-user').value
  const set = $('#member-set').value
  if (user === '') return
  act(`${op === 'add' ? 'Add' : 'Remove'} ${user} ${op === 'add' ? 'to' : 'from'} the ${set}-set`, op === 'add' ? 'PUT' : 'DELETE', `/${set}/${encodeURIComponent(user)}`).catch(console.error)
}
$('#member-form').addEventListener('submit', (event) => {
  event.preventDefault()
  member('add')
})
$('#member-remove').addEventListener('click', () => member('rm'))

// ---- which

/** The router's reason (GET /which's `why`) as a sentence. */
function whyText (d) {
  const threshold = Math.round(d.percent * 100)
  switch (d.why) {
    case 'rolled_back': return 'the rollout is rolled back: everyone goes to legacy'
    case 'deny': return 'in the deny-set: always legacy'
    case 'allow': return 'in the allow-set: always migrated'
    case 'anonymous': return `no usable user key: anonymous requests go to ${d.version}`
    case 'bucket': return d.version === 'migrated' ? `bucket ${d.bucket} < ${threshold} (${d.percent}%)` : `bucket ${d.bucket} ≥ ${threshold} (${d.percent}%)`
    default: return String(d.why)
  }
}

$('#which-form').addEventListener('submit', (event) => {
  event.preventDefault()
  const user = $('#which-user').value
  const out = $('#which-result')
  api('GET', `/which/${encodeURIComponent(user)}`).then((answer) => {
    if (!answer.ok) {
      out.replaceChildren(el('span', { class: 'refused' }, `${answer.data.error ?? answer.status}: ${answer.data.message ?? ''}`))
      return
    }
    const d = answer.data
    out.replaceChildren(el('span', { class: `version ${d.version}`, dataset: { user: d.user, version: d.version, bucket: String(d.bucket) } },
      el('strong', {}, d.version), ` · bucket ${d.bucket} · `, el('span', { class: 'why' }, whyText(d)), el('span', { class: 'muted small' }, ` (${d.why})`)))
  }).catch(console.error)
})

$('#audit-filter').addEventListener('input', renderAudit)
$('#audit-action').addEventListener('change', renderAudit)

renderToken()
loop(refresh, POLL_MS)
loop(refreshHistory, HISTORY_POLL_MS)
