// The added latency of a credit-metered request against an unmetered one, in one run.
//
// Starts the echo origin and the two-isolate workerd rig (scripts/two-isolates.mjs, the built
// worker in build/), issues two keys with the same scopes (one with 10^9 credits, one unmetered)
// and sends GET /licenses/bench through isolate A with each, one request at a time on a
// keep-alive connection, in alternating blocks so that both see the same machine noise. Prints
// the median and mean latency per case and their ratio. Stops everything it started.
//
// Usage: node scripts/bench-credits.mjs [--requests N] [--blocks B] [--concurrency C]
//   (defaults: 2000 requests per case per block, 5 blocks, concurrency 1)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import net from 'node:net';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const REQUESTS = Number(args.requests ?? 2000);
const BLOCKS = Number(args.blocks ?? 5);
const CONCURRENCY = Number(args.concurrency ?? 1);

const children = [];
function stop() {
  for (const c of children) {
    try { process.kill(-c.pid, 'SIGTERM'); } catch { /* gone */ }
  }
}
process.on('exit', stop);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { stop(); process.exit(1); });

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

function start(cmd, argv, ready) {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, argv, { cwd: ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    let out = '';
    const onData = (d) => {
      out += d;
      const m = out.match(ready);
      if (m) resolve(m);
    };
    c.stdout.on('data', onData);
    c.stderr.on('data', onData);
    c.on('exit', (code) => reject(new Error(`${cmd} ${argv.join(' ')} exited ${code}:\n${out}`)));
  });
}

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
function request(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keygate-bench-credits-'));
  const [, originPort] = await start('node', ['scripts/echo-origin.mjs', '0'], /listening (\d+)/);
  const [portA, portB] = [await freePort(), await freePort()];
  const token = crypto.randomBytes(24).toString('hex');
  await start('node', [
    'scripts/two-isolates.mjs', '--port-a', String(portA), '--port-b', String(portB),
    '--origin', `http://127.0.0.1:${originPort}`, '--admin-token', token, '--dir', path.join(dir, 'rig'),
  ], /ready A=/);
  const A = `http://127.0.0.1:${portA}`;
  const issue = async (body) => {
    const r = await request(`${A}/admin/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (r.status !== 201) throw new Error(`create: ${r.status} ${r.body}`);
    return JSON.parse(r.body).key;
  };
  const metered = await issue({ name: 'bench metered', scopes: ['license:read'], credits: 1_000_000_000 });
  const plain = await issue({ name: 'bench plain', scopes: ['license:read'] });

  async function block(key, n) {
    const times = [];
    let next = 0;
    async function worker() {
      while (next < n) {
        next++;
        const t0 = process.hrtime.bigint();
        const r = await request(`${A}/licenses/bench`, { headers: { 'x-api-key': key } });
        const dt = Number(process.hrtime.bigint() - t0) / 1000;
        if (r.status !== 200) throw new Error(`status ${r.status}: ${r.body}`);
        times.push(dt);
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return times;
  }
  // Warm both (record caches, leases, JIT).
  await block(metered, 300);
  await block(plain, 300);
  const all = { metered: [], plain: [] };
  for (let b = 0; b < BLOCKS; b++) {
    const order = b % 2 === 0 ? ['plain', 'metered'] : ['metered', 'plain'];
    for (const name of order) all[name].push(...(await block(name === 'metered' ? metered : plain, REQUESTS)));
  }
  const stats = (xs) => {
    const s = [...xs].sort((a, b) => a - b);
    const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
    return { n: s.length, median: q(0.5), p99: q(0.99), mean: s.reduce((a, b) => a + b, 0) / s.length };
  };
  const m = stats(all.metered);
  const p = stats(all.plain);
  const fmt = (x) => x.toFixed(0).padStart(7);
  console.log(`requests per case: ${m.n} (${BLOCKS} alternating blocks, concurrency ${CONCURRENCY}), isolate A, raw workerd`);
  console.log('case          median µs    mean µs     p99 µs');
  console.log(`unmetered     ${fmt(p.median)}    ${fmt(p.mean)}    ${fmt(p.p99)}`);
  console.log(`metered       ${fmt(m.median)}    ${fmt(m.mean)}    ${fmt(m.p99)}`);
  console.log(`ratio metered/unmetered: median ${(m.median / p.median).toFixed(3)}, mean ${(m.mean / p.mean).toFixed(3)}`);
  agent.destroy();
  stop();
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}

main().catch((e) => { console.error(e); stop(); process.exit(1); });
