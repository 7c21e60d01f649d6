#!/usr/bin/env bash
# Runs the Dockerfile's steps without a Docker engine, so that the image's build and start are checked anywhere:
# it reads the Dockerfile instruction by instruction (FROM, WORKDIR, ENV, COPY, RUN, USER, EXPOSE, STOPSIGNAL,
# HEALTHCHECK, CMD), gives each stage a directory standing in for its filesystem, runs the RUN commands there
# with the host's Node.js, then starts the CMD with the final stage's environment, waits for the HEALTHCHECK to
# pass, and stops the process with the STOPSIGNAL as `docker stop` would.
#
#   scripts/docker-steps.sh [--worktree] [--wait] [-e NAME=VALUE]...
#
#   --worktree   build from the working tree (files git tracks or would track), as `docker build .` does;
#                the default is a clean `git archive HEAD`, as a CI build would see it
#   --wait       once healthy, print "ready <pid>" and wait for the process to exit (the caller sends the signal)
#   --exec CMD   once healthy, run CMD in the container's environment and directory, like `docker exec`
#   -e N=V       an environment variable for the container, like `docker run -e` (wins over the image's ENV)
#
# What it cannot check without an engine: the base image itself, file ownership and the USER switch (the process
# runs as the calling user), and the isolation of the container's network and filesystem.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
worktree=false
wait_for_exit=false
declare -a run_env=()
declare -a exec_cmds=()
while [ $# -gt 0 ]; do
  case "$1" in
    --worktree) worktree=true ;;
    --wait) wait_for_exit=true ;;
    -e) run_env+=("$2"); shift ;;
    --exec) exec_cmds+=("$2"); shift ;;
    *) echo "docker-steps: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

work=$(mktemp -d "${TMPDIR:-/tmp}/dbshift-docker-steps.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'docker-steps: %s\n' "$*" >&2; exit 1; }

# --- the build context -------------------------------------------------------------------------------------------
context="$work/context"
mkdir -p "$context"
if $worktree; then
  step "context: the working tree"
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c '[ -e "$1" ] && printf "%s\0" "$1"' _ {} | tar --null -T - -cf -) | tar -xf - -C "$context"
else
  step "context: git archive HEAD ($(git -C "$repo" rev-parse --short HEAD))"
  git -C "$repo" archive HEAD | tar -xf - -C "$context"
fi
[ -f "$context/Dockerfile" ] || fail "no Dockerfile in the context"
# .dockerignore: drop what it names (plain and ** patterns; `!` exceptions are not supported and refused).
if [ -f "$context/.dockerignore" ]; then
  (
    cd "$context"
    shopt -s globstar nullglob dotglob
    while IFS= read -r pattern || [ -n "$pattern" ]; do
      pattern="${pattern%%#*}"; pattern="${pattern//[[:space:]]/}"
      [ -z "$pattern" ] && continue
      if [ "${pattern:0:1}" = '!' ]; then echo "docker-steps: .dockerignore exceptions ($pattern) are not supported" >&2; exit 1; fi
      pattern="${pattern#/}"
      # shellcheck disable=SC2206 # the pattern is meant to glob
      matches=( $pattern )
      if [ ${#matches[@]} -gt 0 ]; then rm -rf -- "${matches[@]}"; fi
    done < .dockerignore
  )
fi

# --- the Dockerfile, one logical line per instruction --------------------------------------------------------------
mapfile -t instructions < <(awk '
  /^[[:space:]]*#/ { next }
  { line = line $0 }
  /\\[[:space:]]*$/ { sub(/\\[[:space:]]*$/, "", line); next }
  { if (line ~ /[^[:space:]]/) print line; line = "" }
' "$context/Dockerfile")

declare -A stage_index=()
declare -A env=()
stage=-1
root=
cwd=/
user=root
stop_signal=TERM
exposed=
health_json=
cmd_json=

# A path inside the current stage's filesystem.
in_root() { case "$1" in /*) printf '%s%s' "$root" "$1" ;; *) printf '%s%s/%s' "$root" "$cwd" "$1" ;; esac; }
json_array() { node -e 'const a = JSON.parse(process.argv[1]); if (!Array.isArray(a)) process.exit(1); for (const s of a) process.stdout.write(s + "\0")' "$1"; }

for line in "${instructions[@]}"; do
  read -r keyword rest <<<"$line"
  keyword=${keyword^^}
  case "$keyword" in
    FROM)
      stage=$((stage + 1))
      root="$work/stage-$stage"
      mkdir -p "$root"
      cwd=/
      env=()
      read -r image _as alias <<<"$rest"
      if [ -n "${alias:-}" ]; then stage_index[$alias]=$stage; fi
      step "stage $stage: FROM $image (the host's Node.js $(node --version) stands in for it)"
      ;;
    ARG | LABEL) ;;
    WORKDIR)
      case "$rest" in /*) cwd=$rest ;; *) cwd="$cwd/$rest" ;; esac
      mkdir -p "$root$cwd"
      ;;
    ENV)
      for pair in $rest; do
        [[ "$pair" == *=* ]] || fail "ENV $rest: only the NAME=VALUE form is supported"
        # $NAME refers to the value before this instruction: the stage's ENV so far, else the host's (the base image).
        value=${pair#*=}
        expanded=
        while [[ "$value" =~ ^([^$]*)\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?(.*)$ ]]; do
          ref=${BASH_REMATCH[2]}
          expanded+="${BASH_REMATCH[1]}${env[$ref]:-${!ref:-}}"
          value=${BASH_REMATCH[3]}
        done
        env[${pair%%=*}]=$expanded$value
      done
      ;;
    COPY)
      read -ra words <<<"$rest"
      from=
      args=()
      for word in "${words[@]}"; do
        case "$word" in
          --from=*) from=${word#--from=} ;;
          --chown=* | --chmod=* | --link) ;;
          *) args+=("$word") ;;
        esac
      done
      dest=${args[-1]}
      unset 'args[-1]'
      if [ -n "$from" ]; then source_root="$work/stage-${stage_index[$from]:?unknown stage $from}"; else source_root=$context; fi
      target=$(in_root "$dest")
      echo "COPY ${from:+--from=$from }${args[*]} -> $dest"
      for src in "${args[@]}"; do
        shopt -s nullglob
        # shellcheck disable=SC2206 # COPY sources may be globs
        matched=( "$source_root"/${src#/} )
        shopt -u nullglob
        [ ${#matched[@]} -gt 0 ] || fail "COPY $src: no such file in the ${from:-build context} (is it in .dockerignore?)"
        for path in "${matched[@]}"; do
          if [ -d "$path" ]; then
            mkdir -p "$target" && cp -a "$path/." "$target/"
          elif [[ "$dest" == */ ]] || [ ${#args[@]} -gt 1 ]; then
            mkdir -p "$target" && cp -a "$path" "$target/"
          else
            mkdir -p "$(dirname "$target")" && cp -a "$path" "$target"
          fi
        done
      done
      ;;
    RUN)
      # Only commands that work inside WORKDIR can run on the host; an absolute path would reach outside it.
      if [[ " $rest" =~ [[:space:]]/ ]]; then fail "RUN $rest: refers to an absolute path, which cannot be run outside a container"; fi
      echo "RUN $rest"
      declare -a stage_env=()
      for name in "${!env[@]}"; do stage_env+=("$name=${env[$name]}"); done
      (cd "$root$cwd" && env "${stage_env[@]}" npm_config_prefer_offline="${npm_config_prefer_offline:-true}" npm_config_update_notifier=false sh -c "$rest")
      ;;
    USER) user=$rest ;;
    EXPOSE) exposed=$rest ;;
    STOPSIGNAL) stop_signal=${rest#SIG} ;;
    HEALTHCHECK) health_json=${rest#*CMD } ;;
    CMD) cmd_json=$rest ;;
    *) fail "$keyword: not supported by this script" ;;
  esac
done

# --- what the image promises ----------------------------------------------------------------------------------------
step "image: user $user, ports $exposed, stop signal SIG$stop_signal"
case "$user" in root | 0 | 0:*) fail "the image runs as root" ;; esac
[ -n "$cmd_json" ] || fail "no CMD"
[ -n "$health_json" ] || fail "no HEALTHCHECK"
mapfile -d '' -t cmd < <(json_array "$cmd_json") || fail "CMD must be in exec form (a JSON array), so that the process gets the stop signal"
mapfile -d '' -t health < <(json_array "$health_json") || fail "HEALTHCHECK CMD must be in exec form"
if [ -f "$root$cwd/package.json" ]; then
  # Production dependencies only: no devDependency may have reached the final image.
  (cd "$root$cwd" && node -e '
    const { readFileSync, existsSync } = require("node:fs")
    const dev = Object.keys(JSON.parse(readFileSync("package.json", "utf8")).devDependencies ?? {})
    const found = dev.filter((name) => existsSync(`node_modules/${name}`))
    if (found.length > 0) { console.error(`docker-steps: dev dependencies in the final image: ${found.join(", ")}`); process.exit(1) }
    console.log(`no dev dependencies in the final image (checked ${dev.length})`)
  ') || fail "the final image holds dev dependencies"
fi

# The container's environment: the image's ENV, then -e. Each absolute path the stage's filesystem holds is moved
# into the stage's directory.
declare -a container_env=()
for name in "${!env[@]}"; do
  value=${env[$name]}
  IFS=: read -ra parts <<<"$value"
  for i in "${!parts[@]}"; do
    if [[ "${parts[$i]}" == /* ]] && [ -e "$root${parts[$i]}" ]; then parts[i]="$root${parts[$i]}"; fi
  done
  value=$(IFS=:; printf '%s' "${parts[*]}")
  container_env+=("$name=$value")
done
container_env+=("${run_env[@]}")

# --- docker run, then docker stop -------------------------------------------------------------------------------------
step "start: ${cmd[*]} (in $cwd)"
cd "$root$cwd"
env "${container_env[@]}" "${cmd[@]}" &
pid=$!

deadline=$((SECONDS + 30))
until env "${container_env[@]}" "${health[@]}" >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; fail "the process exited before it was healthy"; }
  [ $SECONDS -lt $deadline ] || fail "not healthy within 30 s"
  sleep 0.2
done
step "healthy (HEALTHCHECK passed)"
for command in "${exec_cmds[@]}"; do
  step "exec: $command"
  env "${container_env[@]}" sh -c "$command" || fail "exec $command failed"
done

if $wait_for_exit; then
  echo "ready $pid"
else
  step "stop: SIG$stop_signal"
  kill -s "$stop_signal" "$pid"
fi
status=0
wait "$pid" || status=$?
pid=
step "exited with status $status"
exit "$status"
