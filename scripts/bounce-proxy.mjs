// A misconfigured upstream for the loop test: it sends every request it receives, unchanged
// (method, raw path, headers, body), to TARGET and relays the answer. Pointing a gateway's
// origin at it, with TARGET the gateway itself, makes a real forwarding loop.
// Usage: node scripts/bounce-proxy.mjs PORT TARGET_PORT   (prints "listening PORT")
import http from 'node:http';

const [port, targetPort] = [Number(process.argv[2]), Number(process.argv[3])];
const server = http.createServer((req, res) => {
  const headers = { ...req.headers, host: `127.0.0.1:${targetPort}` };
  const out = http.request(
    { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers },
    (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    },
  );
  out.on('error', (e) => {
    res.writeHead(599, { 'content-type': 'text/plain' });
    res.end(`bounce failed: ${e.message}`);
  });
  req.pipe(out);
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${server.address().port}`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
