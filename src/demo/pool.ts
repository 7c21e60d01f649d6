import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

/**
 * A tiny stand-in for one version of the application: it answers every request with JSON naming itself, the
 * user and the version dbshift tagged the request with.
 */
export async function startDemoPool (name: string, port = 0, host = '127.0.0.1'): Promise<{ server: Server, url: string }> {
  const server = createServer((req, res) => {
    req.resume()
    req.once('end', () => {
      const body = JSON.stringify({
        servedBy: name,
        taggedAs: req.headers['x-dbshift-version'] ?? null,
        user: req.headers['x-user-id'] ?? null,
        method: req.method,
        path: req.url
      })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
      res.end(body)
    })
  })
  await new Promise<void>((resolve) => server.listen(port, host, resolve))
  return { server, url: `http://${host}:${(server.address() as AddressInfo).port}` }
}
