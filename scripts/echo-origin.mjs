// A local origin for development and tests. It answers every request with what it received,
// as JSON: {method, path, query, headers, body}. `path` is the raw request-target path, exactly
// as it arrived (no URL normalisation), so tests see what a real origin would act on. Paths under /status/{code} answer that status,
// and /set-header/{name}/{value} adds a response header, so tests can check that the origin's
// response comes back unchanged.
// Usage: node scripts/echo-origin.mjs [port]   (0 = any free port; prints "listening PORT")
import http from 'node:http';

const port = Number(process.argv[2] ?? 8788);
// Every request received, for tests that must prove something did NOT arrive:
// GET /__echo/log (asked directly, never through the gateway) returns them all.
const received = [];
const server = http.createServer((req, res) => {
  if (req.url === '/__echo/log') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(received));
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const url = new URL(req.url, 'http://origin.local');
    const rawPath = req.url.split('?')[0];
    const headers = {};
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const k = req.rawHeaders[i].toLowerCase();
      headers[k] = headers[k] === undefined ? req.rawHeaders[i + 1] : `${headers[k]}, ${req.rawHeaders[i + 1]}`;
    }
    const body = JSON.stringify({
      method: req.method,
      path: rawPath,
      query: url.search.replace(/^\?/, ''),
      headers,
      body: Buffer.concat(chunks).toString('utf8'),
    });
    if (received.length < 100000) received.push(JSON.parse(body));
    let status = 200;
    const extra = {};
    const m = url.pathname.match(/^\/[^/]*\/status\/(\d{3})$/) || url.pathname.match(/^\/status\/(\d{3})$/);
    if (m) status = Number(m[1]);
    const h = url.pathname.match(/\/set-header\/([A-Za-z0-9-]+)\/([^/]+)$/);
    if (h) extra[h[1]] = decodeURIComponent(h[2]);
    res.writeHead(status, { 'content-type': 'application/json', 'x-origin': 'echo', ...extra });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
});
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
