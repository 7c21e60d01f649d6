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

interface CompiledRoute {
  route: Route
  /** The literal start of the glob: a cheap test that skips most routes before their regular expression. */
  base: string
  regex: RegExp
  methods: readonly string[] | undefined
}

/**
 * The `routes` list, compiled once: the first route whose methods and glob match a request is its route, and
 * a request that matches none is on DEFAULT_ROUTE. Matching allocates nothing.
 */
export class RouteTable {
  readonly routes: readonly Route[]
  readonly #compiled: CompiledRoute[]

  /** Throws on a duplicate name or a bad glob; the config's validation reports those first, by key. */
  constructor (configs: readonly RouteConfig[]) {
    const names = new Set<string>([DEFAULT_ROUTE_NAME])
    this.#compiled = configs.map((config, index) => {
      if (names.has(config.name)) throw new Error(`route name "${config.name}" is used twice (or is the reserved "${DEFAULT_ROUTE_NAME}")`)
      names.add(config.name)
      const problem = globProblem(config.path)
      if (problem !== undefined) throw new Error(`route "${config.name}" path "${config.path}" ${problem}`)
      const route: Route = Object.freeze({ name: config.name, index, mode: config.mode, class: config.class })
      const scanned = picomatch.scan(config.path)
      return {
        route,
        base: scanned.negated ? '' : scanned.base.split('\\')[0] as string, // an escape (`\*`) ends the literal part
        regex: picomatch.makeRe(config.path, GLOB_OPTIONS),
        methods: config.methods === undefined || config.methods.length === 0 ? undefined : [...config.methods]
      }
    })
    this.routes = this.#compiled.map((c) => c.route)
  }

  /** The route of a request: `path` is the normalised path (normalisePath), `method` as sent. */
  match (method: string | undefined, path: string): Route {
    const compiled = this.#compiled
    for (let i = 0; i < compiled.length; i++) {
      const c = compiled[i] as CompiledRoute
      if (!path.startsWith(c.base)) continue
      if (c.methods !== undefined && (method === undefined || !c.methods.includes(method))) continue
      if (c.regex.test(path)) return c.route
    }
    return DEFAULT_ROUTE
  }

  /** The route called `name`, or undefined. */
  byName (name: string): Route | undefined {
    return name === DEFAULT_ROUTE_NAME ? DEFAULT_ROUTE : this.routes.find((route) => route.name === name)
  }
}
