// CPU profile of one worker in a running workerd, through its inspector (workerd serve
// --inspector-addr=127.0.0.1:PORT), for scripts/bench-http.sh's PROFILE mode: samples for
// SECONDS while the caller puts load on the worker, then prints the functions with the most
// self time. Wasm functions have names only in a build with its name section
// (KEYGATE_WASM_NAMES=1 bash scripts/build.sh).
//   node cpu-profile.mjs http://127.0.0.1:PORT SERVICE SECONDS [OUT.cpuprofile]
import fs from 'node:fs';

const [base, service, seconds, out] = process.argv.slice(2);
const list = await (await fetch(`${base}/json/list`)).json();
const target = list.find((t) => t.title === service || t.id === service || (t.webSocketDebuggerUrl ?? '').endsWith(`/${service}`));
if (!target) {
  console.error(`no inspector target for ${service}: ${JSON.stringify(list)}`);
  process.exit(1);
}
const ws = new WebSocket(target.webSocketDebuggerUrl);
let next = 1;
const waiting = new Map();
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && waiting.has(msg.id)) {
    waiting.get(msg.id)(msg);
    waiting.delete(msg.id);
  }
};
const send = (method, params = {}) =>
  new Promise((resolve) => {
    const id = next++;
    waiting.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
await new Promise((resolve, reject) => {
  ws.onopen = resolve;
  ws.onerror = reject;
});
await send('Profiler.enable');
await send('Profiler.setSamplingInterval', { interval: 50 });
await send('Profiler.start');
console.error(`profiling ${service} for ${seconds} s`);
await new Promise((r) => setTimeout(r, Number(seconds) * 1000));
const { result } = await send('Profiler.stop');
ws.close();
const profile = result.profile;
if (out) fs.writeFileSync(out, JSON.stringify(profile));

// Self time per function (name + where), from the samples and their time deltas.
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  const f = byId.get(id).callFrame;
  const where = f.url ? (f.url.endsWith('.wasm') || f.url.startsWith('wasm') ? 'wasm' : f.url.split('/').pop()) : '';
  const key = `${f.functionName || '(anonymous)'}${where ? ` [${where}]` : ''}`;
  self.set(key, (self.get(key) ?? 0) + dt);
  total += dt;
});
const idle = [...self].filter(([k]) => k.startsWith('(idle)')).reduce((a, [, v]) => a + v, 0);
const busy = total - idle;
console.log(`${service}: ${(total / 1e3).toFixed(0)} ms sampled, ${(busy / 1e3).toFixed(0)} ms not idle`);
console.log('| self ms | % of busy | function |');
console.log('|---:|---:|---|');
for (const [k, v] of [...self].filter(([k]) => !k.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.TOP ?? 40))) {
  console.log(`| ${(v / 1e3).toFixed(1)} | ${((100 * v) / busy).toFixed(1)} | ${k.replaceAll('|', '\\|')} |`);
}
