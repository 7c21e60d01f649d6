// The baseline: bare @fastify/http-proxy (reply-from over undici), no routing, no metrics, no logging.
import proxy from '@fastify/http-proxy'
import Fastify from 'fastify'

const app = Fastify({ logger: false })
await app.register(proxy, { upstream: process.env.UPSTREAM ?? '' })
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT) })
process.once('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
