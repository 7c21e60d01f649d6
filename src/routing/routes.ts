import picomatch from 'picomatch'

/** How a route is routed: `split` by the rollout's rules, or everyone to one version (no hash). */
export const ROUTE_MODES = ['split', 'legacy', 'migrated'] as const
export type RouteMode = typeof ROUTE_MODES[number]

export const REQUEST_CLASSES = ['read', 'write'] as const
export type RequestClass = typeof REQUEST_CLASSES[number]

/** The name of the route of requests that match no configured route, and of its metric series. */
export const DEFAULT_ROUTE_NAME = 'default'

/** A `routes` entry of the config file. */
export interface RouteConfig {
  name: string
  /** A glob matched against the normalised path (path.ts). */
  path: string
  /** Upper-case methods this route is limited to; any method when missing. */
  methods?: readonly string[]
  mode: RouteMode
  /** Overrides the method rule (GET, HEAD, OPTIONS read; anything else writes). */
  class?: RequestClass
}

/** One compiled route. `index` is its place in the table (the default route is -1). */
export interface Route {
  readonly name: string
  readonly index: number
  readonly mode: RouteMode
  readonly class: RequestClass | undefined
}

export const DEFAULT_ROUTE: Route = Object.freeze({ name: DEFAULT_ROUTE_NAME, index: -1, mode: 'split', class: undefined })

/** The picomatch options of every route glob (and of the L2 feature routes): `*` matches names starting with a dot too. */
export const GLOB_OPTIONS = { dot: true, strictBrackets: true } as const

/** A read when the method is GET, HEAD or OPTIONS, a write otherwise, unless the route gives a class. */
export function classOf (method: string | undefined, route: Route): RequestClass {
  if (route.class !== undefined) return route.class
  return method === 'GET' || method === 'HEAD' || method === 'OPTIONS' ? 'read' : 'write'
}

/**
 * Why a route glob cannot be used, or undefined. A glob is matched against normalised paths, so one that no
 * normalised path can match (a query, a `//`, a `.` or `..` segment, a trailing slash) is a mistake, not a rule.
 */
export function globProblem (glob: string): string | undefined {
  if (!glob.startsWith('/')) return 'must start with "/"'
  if (glob.includes('#') || glob.includes('%2F') || glob.includes('%2f')) return 'must not hold a "#" or an encoded "/"'
  if (glob.includes('//') || /\/\.\.?(\/|$)/.test(glob)) return 'must be a normalised path (no "//", "." or ".." segments)'
  if (glob.length > 1 && glob.endsWith('/')) return 'must not end with "/" (normalised paths have no trailing slash)'
  try {
    picomatch.makeRe(glob, GLOB_OPTIONS)
  } catch (err) {
    return `is not a valid glob (${(err as Error).message})`
  }
  return undefined
}

/** FNV-1a of the segment of `path` that starts at `from` (up to the next `/`): no substring is made. */
function segmentHash (path: string, from: number): number {
  let hash = 0x811c9dc5
  for (let i = from; i < path.length; i++) {
    const c = path.charCodeAt(i)
    if (c === 0x2f) break
    hash = Math.imul(hash ^ c, 0x01000193)
  }
  return hash & 0x3fffffff // a small integer: no number is boxed to look it up
}

interface CompiledRoute {
  route: Route
  /** The literal start of the glob: a cheap test that skips most routes before their regular expression. */
  base: string
  /**
   * How the rest is tested: the regular expression, or for the common shapes a string test that gives the same
   * answer on normalised paths (which have no `.`, `..` or empty segment): `exact` for a glob without wildcards,
   * `tree` for `<literal>/**` (the literal itself and everything under it).
   */
  shape: 'regex' | 'exact' | 'tree'
  regex: RegExp
  methods: readonly string[] | undefined
}

/** The compiled form of one `routes` list: swapped whole by RouteTable.replace. */
interface CompiledTable {
  routes: readonly Route[]
  /**
   * The routes a path can match, by a hash of its first segment: those whose literal start names that segment,
   * merged in table order with those that start with a glob (anySegment). Most routes are skipped unseen.
   */
  bySegment: Map<number, CompiledRoute[]>
  anySegment: CompiledRoute[]
}

/**
 * The `routes` list, compiled once: the first route whose methods and glob match a request is its route, and
 * a request that matches none is on DEFAULT_ROUTE. Matching allocates nothing. A reload replaces the list in
 * place (one assignment), so every holder of the table (the forwarder, the admin `/which`) follows it.
 */
export class RouteTable {
  #table: CompiledTable

  /** Throws on a duplicate name or a bad glob; the config's validation reports those first, by key. */
  constructor (configs: readonly RouteConfig[]) {
    this.#table = compile(configs)
  }

  /** The routes in table order (a route's `index` is its place here). */
  get routes (): readonly Route[] {
    return this.#table.routes
  }

  /** Takes the routes of `other` at once: a request is matched against the old list or the new one, never a mix. */
  replace (other: RouteTable): void {
    this.#table = other.#table
  }

  /** The route of a request: `path` is the normalised path (normalisePath), `method` as sent. */
  match (method: string | undefined, path: string): Route {
    const table = this.#table
    const candidates = table.bySegment.get(segmentHash(path, 1)) ?? table.anySegment
    for (let i = 0; i < candidates.length; i++) {
      const c = candidates[i] as CompiledRoute
      if (!path.startsWith(c.base)) continue
      if (c.methods !== undefined && (method === undefined || !c.methods.includes(method))) continue
      if (c.shape === 'exact' ? path.length === c.base.length : c.shape === 'tree' ? path.length === c.base.length || path.charCodeAt(c.base.length) === 0x2f : c.regex.test(path)) return c.route
    }
    return DEFAULT_ROUTE
  }

  /** The route called `name`, or undefined. */
  byName (name: string): Route | undefined {
    return name === DEFAULT_ROUTE_NAME ? DEFAULT_ROUTE : this.routes.find((route) => route.name === name)
  }
}

/** Compiles a `routes` list; throws on a duplicate name or a bad glob. */
function compile (configs: readonly RouteConfig[]): CompiledTable {
  const names = new Set<string>([DEFAULT_ROUTE_NAME])
  const compiled = configs.map((config, index): CompiledRoute => {
    if (names.has(config.name)) throw new Error(`route name "${config.name}" is used twice (or is the reserved "${DEFAULT_ROUTE_NAME}")`)
    names.add(config.name)
    const problem = globProblem(config.path)
    if (problem !== undefined) throw new Error(`route "${config.name}" path "${config.path}" ${problem}`)
    const route: Route = Object.freeze({ name: config.name, index, mode: config.mode, class: config.class })
    const scanned = picomatch.scan(config.path)
    const literal = !config.path.includes('\\')
    return {
      route,
      base: scanned.negated ? '' : scanned.base.split('\\')[0] as string, // an escape (`\*`) ends the literal part
      shape: literal && !scanned.isGlob ? 'exact' : literal && scanned.glob === '**' && scanned.base.length > 1 ? 'tree' : 'regex',
      regex: picomatch.makeRe(config.path, GLOB_OPTIONS),
      methods: config.methods === undefined || config.methods.length === 0 ? undefined : [...config.methods]
    }
  })
  const segmentOf = (c: CompiledRoute): number | undefined => {
    // The literal start names the first segment only when that segment is whole in the glob: `/reports` of
    // `/reports/**` does, `/x` of `/x\*y` and `/` of `/*.js` do not.
    const glob = (configs[c.route.index] as RouteConfig).path
    const slash = c.base.indexOf('/', 1)
    const end = slash === -1 ? c.base.length : slash
    const whole = end === glob.length || glob.charCodeAt(end) === 0x2f
    return end > 1 && whole ? segmentHash(c.base, 1) : undefined
  }
  const anySegment = compiled.filter((c) => segmentOf(c) === undefined)
  const bySegment = new Map<number, CompiledRoute[]>()
  for (const c of compiled) {
    const segment = segmentOf(c)
    if (segment !== undefined && !bySegment.has(segment)) {
      bySegment.set(segment, compiled.filter((other) => other === c || segmentOf(other) === undefined || segmentOf(other) === segment))
    }
  }
  return { routes: compiled.map((c) => c.route), bySegment, anySegment }
}
