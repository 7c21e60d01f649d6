# syntax=docker/dockerfile:1
# dbshift: built with the dev dependencies, run with the production ones only, as a non-root user.
# scripts/docker-steps.sh runs these same steps without a Docker engine (test/deploy-docker-steps.test.ts).

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# No scripts: `prepare` would build before the sources are copied.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build
# The package's `dbshift` command under the name npm would link it as.
COPY bin ./bin
RUN ln -s dbshift.js bin/dbshift
RUN npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:20-bookworm-slim
# The admin port (health, metrics) must be reachable from outside the container: probes and Prometheus.
# Mount your own config at /etc/dbshift/dbshift.yaml, or point DBSHIFT_CONFIG elsewhere.
# /app/bin on PATH: `docker exec <container> dbshift status` runs the command line with the same config.
ENV NODE_ENV=production DBSHIFT_CONFIG=/etc/dbshift/dbshift.yaml DBSHIFT_ADMIN_LISTEN=0.0.0.0:9901 PATH=/app/bin:$PATH
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
COPY config/dbshift.yaml /etc/dbshift/dbshift.yaml
USER node
EXPOSE 8080 9901
# node runs as PID 1 and handles SIGTERM itself: it stops accepting, drains in-flight requests for up to
# server.shutdownGraceMs (25 s), then exits. Give the container a longer stop timeout than that (docker stop -t 30).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.DBSHIFT_ADMIN_LISTEN || '127.0.0.1:9901').split(':').pop() + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "dist/main.js"]
