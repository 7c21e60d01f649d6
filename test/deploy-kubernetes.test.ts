import { execFile, spawnSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { promisify } from 'node:util'
import { fileURLToPath } from 'node:url'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parseAllDocuments, stringify } from 'yaml'
import { ENV_KEYS, loadConfig, parseHostPort, resolveConfig, type Config } from '../src/config.ts'
import { startProxy, startRedis, startUpstream, testConfig } from './helpers.ts'

// No cluster runs here: the manifests under deploy/ are parsed and checked against the code (variables, ports,
// config file, probes, Secrets, Services) and the probe paths are asked of a real dbshift.
const DEPLOY = fileURLToPath(new URL('../deploy/', import.meta.url))
const RULES = fileURLToPath(new URL('../config/prometheus/dbshift-rules.yml', import.meta.url))

interface EnvVar { name: string, value?: string, valueFrom?: { secretKeyRef?: { name: string, key: string } } }
interface Probe { httpGet?: { path: string, port: string | number } }
interface Container {
  name: string
  image: string
  ports?: Array<{ name?: string, containerPort: number }>
  env?: EnvVar[]
  volumeMounts?: Array<{ name: string, mountPath: string }>
  livenessProbe?: Probe
  readinessProbe?: Probe
  lifecycle?: { preStop?: { exec?: { command: string[] } } }
  securityContext?: { allowPrivilegeEscalation?: boolean }
}
interface PodSpec { containers: Container[], volumes?: Array<{ name: string, configMap?: { name: string } }>, terminationGracePeriodSeconds?: number, securityContext?: { runAsNonRoot?: boolean } }
interface Resource {
  apiVersion: string
  kind: string
  metadata: { name: string }
  data?: Record<string, string>
  stringData?: Record<string, string>
  spec?: {
    selector?: Record<string, string> | { matchLabels: Record<string, string> }
    ports?: Array<{ port: number, targetPort: string | number }>
    template?: { metadata: { labels: Record<string, string>, annotations?: Record<string, string> }, spec: PodSpec }
  }
}

const FOLDERS = ['sidecar', 'edge', 'backing']
const KUSTOMIZATION = 'kustomization.yaml'
const manifests = (folder: string): string[] => readdirSync(join(DEPLOY, folder)).filter((file) => file.endsWith('.yaml') && file !== KUSTOMIZATION).sort()

/** Every resource of deploy/<folder>/ alone. */
function loadFolder (folder: string): Resource[] {
  return manifests(folder).flatMap((file) => parseAllDocuments(readFileSync(join(DEPLOY, folder, file), 'utf8')).map((doc) => {
    assert.deepEqual(doc.errors, [], `${folder}/${file}`)
    return doc.toJS() as Resource
  }))
}

/** Every resource of a pattern, plus the backing services everyone relies on. */
const load = (folder: string): Resource[] => [...loadFolder(folder), ...loadFolder('backing')]

const find = (resources: Resource[], kind: string, name: string): Resource | undefined =>
  resources.find((r) => r.kind === kind && r.metadata.name === name)
const pods = (resources: Resource[]): Array<{ name: string, labels: Record<string, string>, annotations: Record<string, string>, spec: PodSpec }> =>
  resources.filter((r) => r.kind === 'Deployment').map((r) => ({ name: r.metadata.name, labels: r.spec?.template?.metadata.labels ?? {}, annotations: r.spec?.template?.metadata.annotations ?? {}, spec: r.spec?.template?.spec as PodSpec }))
const envOf = (container: Container, name: string): EnvVar | undefined => container.env?.find((e) => e.name === name)
const portOf = (container: Container, port: string | number): number | undefined =>
  typeof port === 'number' ? port : container.ports?.find((p) => p.name === port)?.containerPort
const selects = (selector: Record<string, string>, labels: Record<string, string>): boolean =>
  Object.entries(selector).every(([key, value]) => labels[key] === value)

/** dbshift's configuration as the container sees it: the ConfigMap's file, then the container's environment. */
function dbshiftConfig (resources: Resource[], spec: PodSpec, container: Container, secrets: Record<string, string>): Config {
  const configPath = envOf(container, 'DBSHIFT_CONFIG')?.value ?? '/etc/dbshift/dbshift.yaml'
  const mount = container.volumeMounts?.find((m) => configPath.startsWith(`${m.mountPath}/`))
  assert.ok(mount !== undefined, `${configPath} is not mounted`)
  const mapName = spec.volumes?.find((v) => v.name === mount.name)?.configMap?.name
  assert.ok(mapName !== undefined, `volume ${mount.name} is not a ConfigMap`)
  const text = find(resources, 'ConfigMap', mapName)?.data?.[basename(configPath)]
  assert.ok(text !== undefined, `ConfigMap ${mapName} has no ${basename(configPath)}`)
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-k8s-'))
  try {
    writeFileSync(join(dir, 'dbshift.yaml'), text)
    const env: Record<string, string> = { DBSHIFT_CONFIG: join(dir, 'dbshift.yaml') }
    for (const variable of container.env ?? []) if (variable.name !== 'DBSHIFT_CONFIG') env[variable.name] = variable.value ?? secrets[variable.name] ?? ''
    return loadConfig(env)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** What a pattern's manifests promise about dbshift itself; returns its config and pod for pattern-specific checks. */
function checkDbshift (resources: Resource[]): { config: Config, pod: ReturnType<typeof pods>[number], container: Container } {
  const pod = pods(resources).find((p) => p.spec.containers.some((c) => c.name === 'dbshift'))
  assert.ok(pod !== undefined, 'no Deployment runs a dbshift container')
  const container = pod.spec.containers.find((c) => c.name === 'dbshift') as Container
  const known = new Set<string>([...Object.keys(ENV_KEYS), 'DBSHIFT_CONFIG'])
  for (const variable of container.env ?? []) assert.ok(known.has(variable.name), `${variable.name} is not a variable dbshift reads`)

  // The token comes from a Secret that exists. It ships with a placeholder, which dbshift refuses until an operator
  // puts a real token there: the rest of the config is checked with one.
  const secrets: Record<string, string> = {}
  for (const variable of container.env ?? []) {
    const ref = variable.valueFrom?.secretKeyRef
    if (ref === undefined) continue
    const value = find(resources, 'Secret', ref.name)?.stringData?.[ref.key]
    assert.ok(value !== undefined, `${variable.name}: Secret ${ref.name} has no key ${ref.key}`)
    if (variable.name === 'DBSHIFT_ADMIN_TOKEN') assert.throws(() => resolveConfig({ pools: { legacy: ['http://l'], migrated: ['http://m'] } }, { DBSHIFT_ADMIN_TOKEN: value }), /is a placeholder/)
    secrets[variable.name] = variable.name === 'DBSHIFT_ADMIN_TOKEN' ? '0123456789abcdef0123456789abcdef' : value
  }
  assert.ok(envOf(container, 'DBSHIFT_ADMIN_TOKEN')?.valueFrom?.secretKeyRef !== undefined, 'the admin token must come from a Secret')
  const config = dbshiftConfig(resources, pod.spec, container, secrets)

  const listen = parseHostPort(config.listen)
  const admin = parseHostPort(config.adminListen)
  assert.equal(admin.host, '0.0.0.0', 'probes and Prometheus reach the admin port on the pod IP')
  assert.equal(portOf(container, 'proxy'), listen.port)
  assert.equal(portOf(container, 'admin'), admin.port)
  for (const probe of [container.livenessProbe, container.readinessProbe]) {
    assert.ok(probe?.httpGet !== undefined)
    assert.equal(portOf(container, probe.httpGet.port), admin.port, 'probes go to the admin port')
  }
  assert.equal(pod.annotations['prometheus.io/scrape'], 'true')
  assert.equal(Number(pod.annotations['prometheus.io/port']), admin.port)
  assert.equal(pod.annotations['prometheus.io/path'], '/metrics')

  // Kubernetes kills after terminationGracePeriodSeconds, counted from the start of preStop.
  const pause = Number(container.lifecycle?.preStop?.exec?.command.at(-1) ?? 0) * 1000
  assert.ok((pod.spec.terminationGracePeriodSeconds ?? 30) * 1000 > pause + config.server.shutdownGraceMs, 'the grace period must outlast the pause and the drain')
  assert.equal(pod.spec.securityContext?.runAsNonRoot, true)
  assert.equal(container.securityContext?.allowPrivilegeEscalation, false)

  // Redis is a Service of the manifests.
  assert.ok(find(resources, 'Service', new URL(config.redis.url).hostname) !== undefined, `redis.url ${config.redis.url} names no Service`)
  // Clients reach dbshift's proxy port through a Service.
  const front = resources.find((r) => r.kind === 'Service' && selects(r.spec?.selector as Record<string, string>, pod.labels))
  assert.ok(front !== undefined, 'no Service selects the dbshift pods')
  assert.ok(front.spec?.ports?.some((p) => portOf(container, p.targetPort) === listen.port), 'the Service does not target the proxy port')
  return { config, pod, container }
}

test('sidecar: dbshift beside both app containers, probes on the admin port, config from a ConfigMap, token from a Secret', () => {
  const resources = load('sidecar')
  const { config, pod } = checkDbshift(resources)
  for (const version of ['legacy', 'migrated'] as const) {
    for (const url of config.pools[version].members) {
      const { hostname, port } = new URL(url)
      assert.equal(hostname, '127.0.0.1', `pools.${version}: a sidecar reaches its app on loopback`)
      const app = pod.spec.containers.find((c) => envOf(c, 'PORT')?.value === port)
      assert.ok(app !== undefined, `pools.${version}: no container of the pod listens on ${port}`)
      assert.equal(envOf(app, 'ORDERS_SCHEMA')?.value, version)
      assert.ok(find(resources, 'Secret', envOf(app, 'DATABASE_URL')?.valueFrom?.secretKeyRef?.name ?? '') !== undefined)
    }
  }
})

test('edge: dbshift replicas in front of the two pools\' Services', () => {
  const resources = load('edge')
  const { config } = checkDbshift(resources)
  for (const version of ['legacy', 'migrated'] as const) {
    for (const url of config.pools[version].members) {
      const { hostname, port } = new URL(url)
      const service = find(resources, 'Service', hostname)
      assert.ok(service !== undefined, `pools.${version}: no Service ${hostname}`)
      const servicePort = service.spec?.ports?.find((p) => p.port === Number(port === '' ? 80 : port))
      assert.ok(servicePort !== undefined, `pools.${version}: Service ${hostname} has no port ${port}`)
      const selector = service.spec?.selector as Record<string, string>
      const backends = pods(resources).filter((p) => selects(selector, p.labels))
      assert.equal(backends.length, 1, `Service ${hostname} must select one Deployment`)
      const app = backends[0]?.spec.containers[0] as Container
      assert.equal(envOf(app, 'ORDERS_SCHEMA')?.value, version)
      assert.equal(String(portOf(app, servicePort.targetPort)), envOf(app, 'PORT')?.value, `Service ${hostname} targets a port the app does not listen on`)
    }
  }
  const budget = resources.find((r) => r.kind === 'PodDisruptionBudget')
  assert.ok(budget !== undefined)
})

test('the probe paths and the scrape path of the manifests answer on a real dbshift admin port', async (t) => {
  const redis = await startRedis(t)
  const upstream = await startUpstream(t, 'any')
  const { adminUrl } = await startProxy(t, testConfig(redis.url, upstream.url, upstream.url))
  const paths = new Set<string>()
  for (const folder of ['sidecar', 'edge']) {
    for (const pod of pods(load(folder))) {
      const container = pod.spec.containers.find((c) => c.name === 'dbshift')
      if (container === undefined) continue
      for (const probe of [container.livenessProbe, container.readinessProbe]) paths.add(probe?.httpGet?.path ?? '')
      paths.add(pod.annotations['prometheus.io/path'] ?? '')
    }
  }
  assert.deepEqual([...paths].sort(), ['/healthz', '/metrics', '/readyz'])
  for (const path of paths) assert.equal((await fetch(adminUrl + path)).status, 200, path)
})

test('the Kubernetes scrape job is a valid Prometheus config with the shipped rules (promtool check config)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dbshift-k8s-prom-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  type Scrape = { job_name: string, kubernetes_sd_configs?: Array<{ role: string }>, static_configs?: unknown, relabel_configs: Array<{ source_labels?: string[] }> }
  const [file] = parseAllDocuments(readFileSync(join(DEPLOY, 'prometheus', 'scrape-config.yml'), 'utf8')).map((d) => d.toJS() as { scrape_configs: Scrape[] })
  const [job] = file?.scrape_configs ?? []
  assert.equal(job?.job_name, 'dbshift', 'the rules expect the job to be called dbshift')
  assert.deepEqual(job.kubernetes_sd_configs, [{ role: 'pod' }])
  // Only labels the pod role provides, and the annotation and port names the manifests use.
  const labels = job.relabel_configs.flatMap((r) => r.source_labels ?? [])
  for (const label of labels) assert.match(label, /^__meta_kubernetes_(namespace|pod_name|pod_container_name|pod_container_port_name|pod_annotation_prometheus_io_(scrape|path))$/)
  // Debian's promtool is built without Kubernetes discovery: check the rest with a static target in its place.
  const { kubernetes_sd_configs: _discovery, ...rest } = job
  copyFileSync(RULES, join(dir, basename(RULES)))
  writeFileSync(join(dir, 'prometheus.yml'), stringify({ rule_files: [basename(RULES)], scrape_configs: [{ ...rest, static_configs: [{ targets: ['127.0.0.1:9901'] }] }] }))
  const { stdout } = await promisify(execFile)('promtool', ['check', 'config', join(dir, 'prometheus.yml')])
  assert.match(stdout, /SUCCESS: [1-9]\d* rules found/)
})

test('each folder\'s kustomization lists every manifest of the folder, so `kubectl apply -k` gets them all', () => {
  for (const folder of FOLDERS) {
    const [kustomization] = parseAllDocuments(readFileSync(join(DEPLOY, folder, KUSTOMIZATION), 'utf8')).map((d) => d.toJS() as { resources: string[], images?: Array<{ name: string }> })
    assert.deepEqual([...(kustomization?.resources ?? [])].sort(), manifests(folder), folder)
    // Its image entries name images the manifests use, so that `images:` really replaces them.
    const used = new Set(loadFolder(folder).flatMap((r) => r.spec?.template?.spec.containers.map((c) => c.image.split(':')[0]) ?? []))
    for (const image of kustomization?.images ?? []) assert.ok(used.has(image.name), `${folder}: no container uses the image ${image.name}`)
  }
})

const kubectl = spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status === 0
test('`kubectl kustomize` renders each folder to the same resources (offline)', { skip: !kubectl && 'kubectl is not installed' }, async () => {
  for (const folder of FOLDERS) {
    const { stdout } = await promisify(execFile)('kubectl', ['kustomize', join(DEPLOY, folder)])
    const rendered = parseAllDocuments(stdout).map((d) => d.toJS() as Resource).map((r) => `${r.kind}/${r.metadata.name}`).sort()
    assert.deepEqual(rendered, loadFolder(folder).map((r) => `${r.kind}/${r.metadata.name}`).sort(), folder)
  }
})
