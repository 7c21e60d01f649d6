import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { startProcess, type Started } from './processes.ts'

/** The upstream's answer: a 300-byte JSON body, like a small API response. */
export const UPSTREAM_BODY = JSON.stringify({ id: 1234567, status: 'shipped', items: [{ sku: 'A-100', qty: 2 }, { sku: 'B-200', qty: 1 }], total: 59.9, currency: 'EUR', note: 'x'.repeat(169) })

// One process, no daemon, everything under the run's own directory, and long keep-alive on both sides.
const COMMON = `
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid nginx.pid;
events { worker_connections 4096; }
`
const HTTP_COMMON = `
  access_log off;
  client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi;
  uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
`

function prepare (dir: string, conf: string): string {
  mkdirSync(join(dir, 'tmp'), { recursive: true })
  const file = join(dir, 'nginx.conf')
  writeFileSync(file, conf)
  return file
}

/** The upstream: two servers (legacy and migrated) that answer the same fixed JSON body (migrated: `migratedStatus`). */
export function startUpstreamNginx (dir: string, cpus: string | undefined, ports: { legacy: number, migrated: number }, migratedStatus = 200): Started {
  const server = (port: number, version: string, status: number): string => `
  server {
    listen 127.0.0.1:${port} reuseport backlog=4096;
    location / { default_type application/json; add_header x-served-by ${version} always; return ${status} '${UPSTREAM_BODY}'; }
  }`
  const conf = `${COMMON}http {${HTTP_COMMON}${server(ports.legacy, 'legacy', 200)}${server(ports.migrated, 'migrated', migratedStatus)}\n}\n`
  const file = prepare(dir, conf)
  return startProcess('upstream nginx', cpus, 'nginx', ['-p', dir, '-c', file])
}

/** A round-robin load balancer over many proxies, so one wrk spreads its requests over all of them. */
export function startBalancerNginx (dir: string, cpus: string | undefined, port: number, members: string[]): Started {
  const conf = `${COMMON}http {${HTTP_COMMON}
  upstream fleet { ${members.map((m) => `server ${m};`).join(' ')} keepalive 256; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / { proxy_pass http://fleet; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-User-ID $http_x_user_id; }
  }
}
`
  return startProcess('balancer nginx', cpus, 'nginx', ['-p', dir, '-c', prepare(dir, conf)])
}

/** nginx doing dbshift's job the nginx way: split_clients on the user ID, keep-alive pools to both versions. */
export function startSplitClientsNginx (dir: string, cpus: string | undefined, port: number, upstream: { legacy: number, migrated: number }): Started {
  const conf = `${COMMON}http {${HTTP_COMMON}
  split_clients "default:\${http_x_user_id}" $dbshift_version { 20% migrated; * legacy; }
  upstream legacy { server 127.0.0.1:${upstream.legacy}; keepalive 128; }
  upstream migrated { server 127.0.0.1:${upstream.migrated}; keepalive 128; }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / {
      proxy_pass http://$dbshift_version;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header x-dbshift-version $dbshift_version;
      add_header x-dbshift-version $dbshift_version;
    }
  }
}
`
  const file = prepare(dir, conf)
  return startProcess('split_clients nginx', cpus, 'nginx', ['-p', dir, '-c', file])
}
