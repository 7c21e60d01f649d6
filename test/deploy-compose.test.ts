import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parse } from 'yaml'
import { ENV_KEYS, loadConfig, parseHostPort } from '../src/config.ts'

// No Docker engine runs here: docker-compose.yml is read as `docker compose config` would, and every path, port,
// variable and URL in it is checked against the code and the files it mounts.
const ROOT = fileURLToPath(new URL('..', import.meta.url))

interface Service {
  image?: string
  build?: string | { context: string }
  command?: string[]
  environment?: Record<string, string>
  volumes?: string[]
  ports?: string[]
  depends_on?: string[] | Record<string, { condition: string }>
  stop_grace_period?: string
}

/** Compose's `${VAR:-default}` interpolation, with nothing set in the environment. */
const interpolate = (text: string): string => text.replace(/\$\{(\w+)(?::?-([^}]*))?\}/g, (_match, _name: string, fallback?: string) => fallback ?? '')
const compose = parse(interpolate(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'))) as { services: Record<string, Service>, volumes?: Record<string, unknown> }
const services = compose.services

/** The bind mounts of a service: host path (absolute) → path in the container. */
function bindMounts (service: Service): Array<{ source: string, target: string }> {
  return (service.volumes ?? []).filter((volume) => volume.startsWith('.') || volume.startsWith('/')).map((volume) => {
    const [source = '', target = ''] = volume.split(':')
    return { source: resolve(ROOT, source), target }
  })
}

/** Where a path inside a container comes from on the host, through the service's bind mounts. */
function hostPath (service: Service, containerPath: string): string | undefined {
  for (const { source, target } of bindMounts(service)) {
    if (containerPath === target) return source
    if (containerPath.startsWith(`${target}/`)) return join(source, containerPath.slice(target.length + 1))
  }
  return undefined
}

/** The container side of each published port. */
const containerPorts = (service: Service): number[] => (service.ports ?? []).map((port) => Number(port.split(':').pop()))
const buildContext = (service: Service): string | undefined => typeof service.build === 'string' ? service.build : service.build?.context
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8')

test('every service has an image or a build context with a Dockerfile, and depends only on services that exist', () => {
  for (const [name, service] of Object.entries(services)) {
    assert.ok(service.image !== undefined || service.build !== undefined, `${name}: no image and no build`)
    const context = buildContext(service)
    if (context !== undefined) assert.ok(existsSync(join(ROOT, context, 'Dockerfile')), `${name}: no Dockerfile in ${context}`)
    // A command that runs a script of the image's own: the script is in the build context the image copies.
    const script = service.command?.[0] === 'node' ? service.command[1] : undefined
    if (script !== undefined && context !== undefined) assert.ok(existsSync(join(ROOT, context, script)), `${name}: ${script} is not in ${context}`)
    const dependencies = Array.isArray(service.depends_on) ? service.depends_on : Object.keys(service.depends_on ?? {})
    for (const dependency of dependencies) assert.ok(dependency in services, `${name} depends on an unknown service ${dependency}`)
    for (const [variable, value] of Object.entries(service.environment ?? {})) assert.equal(typeof value, 'string', `${name}: ${variable} must be a string`)
    for (const volume of service.volumes ?? []) {
      const source = volume.split(':')[0] ?? ''
      if (source.startsWith('.')) assert.ok(existsSync(join(ROOT, source)), `${name}: ${source} does not exist`)
      else assert.ok(compose.volumes !== undefined && source in compose.volumes, `${name}: the named volume ${source} is not declared`)
    }
  }
  // Services waiting for a healthy dependency need a health check: in compose, or in the dependency's image.
  const healthy = (name: string): boolean => {
    const service = services[name] as Service & { healthcheck?: unknown }
    const context = buildContext(service)
    return service.healthcheck !== undefined || (context !== undefined && /^HEALTHCHECK /m.test(readFileSync(join(ROOT, context, 'Dockerfile'), 'utf8')))
  }
  for (const [name, service] of Object.entries(services)) {
    if (Array.isArray(service.depends_on)) continue
    for (const [dependency, { condition }] of Object.entries(service.depends_on ?? {})) {
      if (condition === 'service_healthy') assert.ok(healthy(dependency), `${name} waits for ${dependency} to be healthy, which has no health check`)
    }
  }
})

test('dbshift gets a valid configuration from the mounted file and its environment, pointing at the stack\'s services', () => {
  const dbshift = services.dbshift as Service
  assert.equal(buildContext(dbshift), '.')
  const environment = dbshift.environment ?? {}
  const known = new Set<string>([...Object.keys(ENV_KEYS), 'DBSHIFT_CONFIG'])
  for (const variable of Object.keys(environment)) assert.ok(known.has(variable), `dbshift: ${variable} is not a variable dbshift reads`)

  const configPath = environment.DBSHIFT_CONFIG ?? /DBSHIFT_CONFIG=(\S+)/.exec(dockerfile)?.[1]
  assert.ok(configPath !== undefined)
  const file = hostPath(dbshift, configPath)
  assert.ok(file !== undefined && existsSync(file), `nothing is mounted at ${configPath}`)
  const config = loadConfig({ ...environment, DBSHIFT_CONFIG: file })

  const admin = parseHostPort(config.adminListen)
  assert.equal(admin.host, '0.0.0.0', 'the admin port must listen beyond the container for Prometheus')
  const listen = parseHostPort(config.listen)
  assert.deepEqual(containerPorts(dbshift).sort(), [listen.port, admin.port].sort())
  for (const port of [listen.port, admin.port]) assert.match(dockerfile, new RegExp(`^EXPOSE .*\\b${port}\\b`, 'm'))

  for (const version of ['legacy', 'migrated'] as const) {
    for (const url of config.pools[version].members) {
      const { hostname, port } = new URL(url)
      const pool = services[hostname]
      assert.ok(pool !== undefined, `pools.${version}: ${hostname} is not a service`)
      assert.equal(pool.environment?.ORDERS_SCHEMA, version)
      assert.equal(port, pool.environment?.PORT, `pools.${version}: ${url} is not the port ${hostname} listens on`)
      const poolDockerfile = readFileSync(join(ROOT, buildContext(pool) ?? '', 'Dockerfile'), 'utf8')
      assert.match(poolDockerfile, new RegExp(`^EXPOSE .*\\b${port}\\b`, 'm'), `${hostname}'s image does not expose ${port}`)
    }
  }
  assert.ok(new URL(config.redis.url).hostname in services, `redis.url ${config.redis.url} is not a service`)

  // `docker compose stop` waits stop_grace_period, then kills: it must outlast the drain.
  const grace = Number(/^(\d+)s$/.exec(dbshift.stop_grace_period ?? '')?.[1]) * 1000
  assert.ok(grace > config.server.shutdownGraceMs, `stop_grace_period ${dbshift.stop_grace_period} is shorter than server.shutdownGraceMs`)
  // The demo traffic goes through dbshift's proxy port.
  assert.equal(services.traffic?.environment?.TARGET_URL, `http://dbshift:${listen.port}`)
})

test('Prometheus, as mounted, loads the shipped rules (promtool check config) and scrapes dbshift\'s admin port', async (t) => {
  const prometheus = services.prometheus as Service
  const configFlag = (prometheus.command ?? []).find((arg) => arg.startsWith('--config.file='))
  const containerConfig = configFlag?.slice('--config.file='.length) ?? '/etc/prometheus/prometheus.yml'
  // Lay the mounted files out as the container sees them, then let promtool resolve rule_files from there.
  const fsRoot = mkdtempSync(join(tmpdir(), 'dbshift-compose-'))
  t.after(() => rmSync(fsRoot, { recursive: true, force: true }))
  for (const { source, target } of bindMounts(prometheus)) cpSync(source, join(fsRoot, target), { recursive: true })
  const { stdout } = await promisify(execFile)('promtool', ['check', 'config', join(fsRoot, containerConfig)])
  assert.match(stdout, /SUCCESS: \d+ rule files? found/)
  assert.match(stdout, /dbshift-rules\.yml/)
  assert.match(stdout, /SUCCESS: [1-9]\d* rules found/)

  const config = parse(readFileSync(join(fsRoot, containerConfig), 'utf8')) as { scrape_configs: Array<{ job_name: string, metrics_path?: string, static_configs: Array<{ targets: string[] }> }> }
  const job = config.scrape_configs.find((scrape) => scrape.job_name === 'dbshift')
  assert.ok(job !== undefined, 'the rules expect a job named dbshift')
  assert.equal(job.metrics_path ?? '/metrics', '/metrics')
  const dbshiftConfig = loadConfig({ ...services.dbshift?.environment, DBSHIFT_CONFIG: hostPath(services.dbshift as Service, '/etc/dbshift/dbshift.yaml') })
  assert.deepEqual(job.static_configs.flatMap((s) => s.targets), [`dbshift:${parseHostPort(dbshiftConfig.adminListen).port}`])
})

test('Grafana provisioning loads the shipped dashboard and reads the stack\'s Prometheus', () => {
  const grafana = services.grafana as Service
  const provisioned = (kind: string): Record<string, any> => {
    const mount = bindMounts(grafana).find(({ target }) => target.startsWith(`/etc/grafana/provisioning/${kind}/`))
    assert.ok(mount !== undefined, `no ${kind} provisioning file is mounted`)
    return parse(readFileSync(mount.source, 'utf8')) as Record<string, any>
  }

  const [source] = provisioned('datasources').datasources as Array<{ type: string, url: string, isDefault: boolean }>
  assert.ok(source !== undefined)
  assert.equal(source.type, 'prometheus')
  assert.equal(source.isDefault, true)
  const url = new URL(source.url)
  assert.equal(url.hostname, 'prometheus')
  assert.deepEqual(containerPorts(services.prometheus as Service), [Number(url.port)])

  const [provider] = provisioned('dashboards').providers as Array<{ options: { path: string } }>
  assert.ok(provider !== undefined)
  const dashboards = hostPath(grafana, provider.options.path)
  assert.ok(dashboards !== undefined && statSync(dashboards).isDirectory(), `nothing is mounted at ${provider.options.path}`)
  const files = readdirSync(dashboards).filter((name) => name.endsWith('.json'))
  assert.ok(files.length > 0, `no dashboard in ${dashboards}`)
  for (const name of files) {
    const dashboard = JSON.parse(readFileSync(join(dashboards, name), 'utf8')) as { uid?: string, panels?: unknown[] }
    assert.ok(dashboard.uid !== undefined && (dashboard.panels?.length ?? 0) > 0, `${name} is not a dashboard`)
  }
  const home = grafana.environment?.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH
  if (home !== undefined) assert.ok(existsSync(hostPath(grafana, home) ?? ''), `the home dashboard ${home} is not mounted`)
  assert.equal(dashboards, join(ROOT, 'config', 'grafana'), 'the provider must load the shipped config/grafana/')
})
