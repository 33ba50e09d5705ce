// Runs the built worker (build/) as TWO workerd services, started directly with a generated
// Cap'n Proto config (no wrangler, no miniflare): two isolates, each with its own per-isolate
// record cache, sharing
//   - one KV namespace: workerd's `kvNamespace` binding turns every KV call into an HTTP request
//     to a service (GET/PUT/DELETE https://fake-host/<url-encoded key>?urlencoded=true, list as
//     GET https://fake-host/?prefix=&cursor=&key_count_limit=). The service here is a small
//     worker (KV_WORKER below) holding the namespace in memory; both gateways bind the same one,
//     so a write through one is visible to the other at once (stricter than real KV);
//   - one Cache API (`caches.default`): without `cacheApiOutbound` workerd THROWS "No Cache was
//     configured" (it is not a no-op), so both gateways point it at CACHE_WORKER below, an
//     in-memory HTTP cache speaking workerd's protocol (GET with `Cache-Control: only-if-cached`
//     answered with `CF-Cache-Status: HIT|MISS`, PUT with a serialized HTTP response as body,
//     PURGE). One shared cache is what two isolates in one Cloudflare location see;
//   - one Durable Object namespace for the class `Registry` (SQLite enabled): service A defines
//     it, stored on disk under --dir (workerd's `inMemory` storage has no SQLite: the SQL API then
//     throws "not backed by SQLite storage"; miniflare uses localDisk too), and service B binds
//     A's namespace with
//     `durableObjectNamespace = (className = "Registry", serviceName = "gateway-a")`.
// Outbound fetches (the gateway forwarding to ORIGIN) may reach loopback addresses only.
//
// Usage:
//   node scripts/two-isolates.mjs --port-a PORT --port-b PORT --origin URL --admin-token TOKEN
//       [--policy FILE.json] [--pepper P] [--no-registry] [--dir DIR]
//       [--build DIR] [--workerd PATH]
//   --policy      the POLICY var as a JSON file; default: [vars.POLICY] of wrangler.toml
//   --no-registry leave the Durable Object namespace and the REGISTRY binding out (for a build
//                 that does not export `Registry` yet). Without it, a build that does not export
//                 `Registry` is an error (exit 3), not a silent fallback.
//   --dir         where the config and the Durable Object storage go; default: a fresh temp dir
// Prints `ready A=http://127.0.0.1:PA B=http://127.0.0.1:PB` once both answer /healthz, and the
// command line it ran workerd with. Runs until killed: stop it by its process group
// (`kill -- -PGID`); on SIGTERM/SIGINT it also stops workerd itself.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function fail(code, msg) {
  process.stderr.write(`two-isolates: ${msg}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const opts = { registry: true };
  const flags = { '--no-registry': 'registry' };
  const values = {
    '--port-a': 'portA', '--port-b': 'portB', '--origin': 'origin', '--admin-token': 'adminToken',
    '--policy': 'policy', '--pepper': 'pepper', '--dir': 'dir', '--build': 'build',
    '--workerd': 'workerd',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a in flags) opts[flags[a]] = false;
    else if (a in values && i + 1 < argv.length) opts[values[a]] = argv[++i];
    else fail(2, `unknown or incomplete argument ${a}`);
  }
  for (const k of ['portA', 'portB', 'origin', 'adminToken']) {
    if (!opts[k]) fail(2, `missing --${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  }
  return opts;
}

/** [vars.POLICY] and compatibility_date of wrangler.toml, as JSON (python3's tomllib, as build.sh). */
function wranglerToml() {
  const out = execFileSync('python3', ['-c', `
import json, sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
print(json.dumps({"policy": cfg["vars"]["POLICY"], "date": cfg["compatibility_date"],
                  "flags": cfg.get("compatibility_flags", [])}))
`, path.join(ROOT, 'wrangler.toml')]);
  return JSON.parse(out.toString());
}

/** The names the build's module exports (its final `export { a as b, ... }` and `export const`). */
function buildExports(indexJs) {
  const text = fs.readFileSync(indexJs, 'utf8');
  const names = new Set();
  // esbuild's output is minified: the list sits mid-line, `...;export{Re as default,X as Registry};`
  for (const m of text.matchAll(/(?:^|[;}\s])export\s*\{([^}]*)\}/g)) {
    for (const part of m[1].split(',')) {
      const name = part.trim().split(/\s+as\s+/).pop()?.trim();
      if (name) names.add(name);
    }
  }
  for (const m of text.matchAll(/(?:^|[;}\s])export\s+(?:const|let|var|class|function|async function)\s+([A-Za-z_$][\w$]*)/g)) {
    names.add(m[1]);
  }
  return names;
}

function findWorkerd(explicit) {
  const candidates = [
    explicit,
    process.env.WORKERD,
    path.join(ROOT, `node_modules/@cloudflare/workerd-${process.platform}-${process.arch === 'x64' ? '64' : process.arch}/bin/workerd`),
    path.join(ROOT, 'node_modules/workerd/bin/workerd'),
  ].filter(Boolean);
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found) fail(1, `no workerd binary (looked at ${candidates.join(', ')}); run npm install`);
  return found;
}

// ---- the helper services (plain JS workers) --------------------------------------------------

const KV_WORKER = `
// workerd's KV protocol (src/workerd/api/kv.c++), one namespace, in memory.
const store = new Map(); // key -> { value: Uint8Array, expiresAt: ms | null, metadata: string | null }
const now = () => Date.now();
function live(key) {
  const e = store.get(key);
  if (e && e.expiresAt !== null && e.expiresAt <= now()) { store.delete(key); return undefined; }
  return e;
}
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === '/' && request.method === 'GET') {
      const prefix = url.searchParams.get('prefix') ?? '';
      const limit = Math.min(Number(url.searchParams.get('key_count_limit') ?? 1000) || 1000, 1000);
      const after = url.searchParams.get('cursor') ? atob(url.searchParams.get('cursor')) : null;
      const names = [...store.keys()].filter((k) => k.startsWith(prefix) && (after === null || k > after) && live(k)).sort();
      const page = names.slice(0, limit);
      const keys = page.map((name) => {
        const e = store.get(name);
        const k = { name };
        if (e.expiresAt !== null) k.expiration = Math.floor(e.expiresAt / 1000);
        if (e.metadata !== null) k.metadata = e.metadata;
        return k;
      });
      const complete = names.length <= limit;
      const body = { keys, list_complete: complete };
      if (!complete) body.cursor = btoa(page[page.length - 1]);
      return Response.json(body);
    }
    const key = decodeURIComponent(url.pathname.slice(1));
    if (request.method === 'GET') {
      const e = live(key);
      if (!e) return new Response(null, { status: 404 });
      const headers = e.metadata !== null ? { 'CF-KV-Metadata': e.metadata } : {};
      return new Response(e.value, { headers });
    }
    if (request.method === 'PUT') {
      const value = new Uint8Array(await request.arrayBuffer());
      let expiresAt = null;
      if (url.searchParams.has('expiration')) expiresAt = Number(url.searchParams.get('expiration')) * 1000;
      if (url.searchParams.has('expiration_ttl')) expiresAt = now() + Number(url.searchParams.get('expiration_ttl')) * 1000;
      store.set(key, { value, expiresAt, metadata: request.headers.get('CF-KV-Metadata') });
      return new Response(null, { status: 200 });
    }
    if (request.method === 'DELETE') {
      store.delete(key);
      return new Response(null, { status: 200 });
    }
    return new Response('method not allowed', { status: 405 });
  },
};
`;

const CACHE_WORKER = `
// workerd's Cache API protocol (src/workerd/api/cache.c++), shared by every gateway, in memory.
const entries = new Map(); // namespace + ' ' + url -> { status, headers: [[k, v]], body, expiresAt }
const enc = new TextDecoder();
function expiry(headers) {
  const cc = (headers.find(([k]) => k === 'cache-control')?.[1] ?? '').toLowerCase();
  if (/(^|,)\\s*(no-store|private)\\b/.test(cc)) return 0;
  const m = cc.match(/s-maxage\\s*=\\s*(\\d+)/) ?? cc.match(/(?:^|[,\\s])max-age\\s*=\\s*(\\d+)/);
  if (m) return Date.now() + Number(m[1]) * 1000;
  const exp = headers.find(([k]) => k === 'expires')?.[1];
  if (exp) return Date.parse(exp) || 0;
  return Date.now() + 2 * 3600 * 1000; // no caching headers: kept (Cloudflare's default TTL)
}
export default {
  async fetch(request) {
    const key = (request.headers.get('CF-Cache-Namespace') ?? '') + ' ' + request.url;
    if (request.method === 'GET') {
      const e = entries.get(key);
      if (!e || e.expiresAt <= Date.now()) {
        entries.delete(key);
        return new Response(null, { status: 504, headers: { 'CF-Cache-Status': 'MISS' } });
      }
      const headers = new Headers(e.headers);
      headers.set('CF-Cache-Status', 'HIT');
      const nullBody = [101, 204, 205, 304].includes(e.status);
      return new Response(nullBody ? null : e.body, { status: e.status, headers });
    }
    if (request.method === 'PUT') {
      // The body is an HTTP/1.1 response: status line, headers, blank line, body.
      const raw = new Uint8Array(await request.arrayBuffer());
      let split = -1;
      for (let i = 0; i + 3 < raw.length; i++) {
        if (raw[i] === 13 && raw[i + 1] === 10 && raw[i + 2] === 13 && raw[i + 3] === 10) { split = i; break; }
      }
      if (split < 0) return new Response('bad response', { status: 400 });
      const [statusLine, ...lines] = enc.decode(raw.subarray(0, split)).split('\\r\\n');
      const status = Number(statusLine.split(' ')[1]);
      const headers = lines.map((l) => { const i = l.indexOf(':'); return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()]; });
      const expiresAt = expiry(headers);
      if (expiresAt <= Date.now()) return new Response(null, { status: 413 });
      entries.set(key, { status, headers, body: raw.slice(split + 4), expiresAt });
      return new Response(null, { status: 204 });
    }
    if (request.method === 'PURGE') {
      return new Response(null, { status: entries.delete(key) ? 200 : 404 });
    }
    return new Response('method not allowed', { status: 405 });
  },
};
`;

// ---- the config ------------------------------------------------------------------------------

const capStr = (s) => JSON.stringify(s); // Cap'n Proto text literals accept JSON string escapes

function gatewayWorker({ self, modules, bindings, date, flags, extra }) {
  return `(
    name = ${capStr(self)},
    worker = (
      compatibilityDate = ${capStr(date)},
      compatibilityFlags = [${flags.map(capStr).join(', ')}],
      modules = [${modules}],
      bindings = [
${bindings.map((b) => `        ${b}`).join(',\n')}
      ],
      globalOutbound = "loopback",
      cacheApiOutbound = "cache",${extra}
    )
  )`;
}

export function makeConfig(o) {
  const rel = (p) => path.relative(o.dir, p);
  const modules = [
    `(name = "index.js", esModule = embed ${capStr(rel(path.join(o.build, 'index.js')))})`,
    ...o.wasmModules.map((w) => `(name = ${capStr(w)}, wasm = embed ${capStr(rel(path.join(o.build, w)))})`),
  ].join(', ');
  const common = [
    `(name = "KEYS", kvNamespace = "kv")`,
    `(name = "ORIGIN", text = ${capStr(o.origin)})`,
    `(name = "POLICY", json = ${capStr(o.policyJson)})`,
    `(name = "ADMIN_TOKEN", text = ${capStr(o.adminToken)})`,
    ...(o.pepper ? [`(name = "KEY_PEPPER", text = ${capStr(o.pepper)})`] : []),
  ];
  const aBindings = [...common];
  const bBindings = [...common];
  let aExtra = '';
  if (o.registry) {
    aBindings.push(`(name = "REGISTRY", durableObjectNamespace = "Registry")`);
    bBindings.push(`(name = "REGISTRY", durableObjectNamespace = (className = "Registry", serviceName = "gateway-a"))`);
    aExtra = `
      durableObjectNamespaces = [(className = "Registry", uniqueKey = "keygate-Registry", enableSql = true)],
      durableObjectStorage = (localDisk = "do-disk"),`;
  }
  const services = [
    gatewayWorker({ self: 'gateway-a', modules, bindings: aBindings, date: o.date, flags: o.flags, extra: aExtra }),
    gatewayWorker({ self: 'gateway-b', modules, bindings: bBindings, date: o.date, flags: o.flags, extra: '' }),
    `(name = "kv", worker = (compatibilityDate = "2024-01-01", modules = [(name = "kv.js", esModule = embed "kv.js")]))`,
    `(name = "cache", worker = (compatibilityDate = "2024-01-01", modules = [(name = "cache.js", esModule = embed "cache.js")]))`,
    // "local" is loopback only: the gateways can reach the echo origin and nothing else.
    `(name = "loopback", network = (allow = ["local"]))`,
    ...(o.registry ? [`(name = "do-disk", disk = (path = ${capStr(path.join(o.dir, 'do'))}, writable = true))`] : []),
  ];
  return `# Generated by scripts/two-isolates.mjs: two gateway isolates sharing KV, cache and Registry.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    ${services.join(',\n    ')}
  ],
  sockets = [
    (name = "a", address = ${capStr(`127.0.0.1:${o.portA}`)}, http = (), service = "gateway-a"),
    (name = "b", address = ${capStr(`127.0.0.1:${o.portB}`)}, http = (), service = "gateway-b"),
  ],
);
`;
}

// ---- main ------------------------------------------------------------------------------------

async function answers(url) {
  try {
    await fetch(url, { signal: AbortSignal.timeout(1000) });
    return true;
  } catch {
    return false;
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  o.build = path.resolve(o.build ?? path.join(ROOT, 'build'));
  const indexJs = path.join(o.build, 'index.js');
  if (!fs.existsSync(indexJs)) fail(1, `${indexJs} is missing: run bash scripts/build.sh`);
  o.wasmModules = fs.readdirSync(o.build).filter((f) => f.endsWith('.wasm'));
  const exported = buildExports(indexJs);
  if (o.registry && !exported.has('Registry')) {
    fail(3, `the build in ${o.build} does not export a Durable Object class named "Registry" ` +
      `(its exports: ${[...exported].sort().join(', ') || 'none found'}); ` +
      'the REGISTRY binding cannot be made. Use --no-registry for a build without it.');
  }
  const toml = wranglerToml();
  o.date = toml.date;
  o.flags = toml.flags;
  o.policyJson = o.policy ? fs.readFileSync(o.policy, 'utf8') : JSON.stringify(toml.policy);
  JSON.parse(o.policyJson); // fail here, not inside workerd, on a policy file that is not JSON
  const ownDir = !o.dir;
  o.dir = path.resolve(o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'keygate-two-isolates-')));
  fs.mkdirSync(path.join(o.dir, 'do'), { recursive: true });
  fs.writeFileSync(path.join(o.dir, 'kv.js'), KV_WORKER);
  fs.writeFileSync(path.join(o.dir, 'cache.js'), CACHE_WORKER);
  const configPath = path.join(o.dir, 'config.capnp');
  fs.writeFileSync(configPath, makeConfig(o));

  const workerd = findWorkerd(o.workerd);
  const args = ['serve', configPath, '--verbose'];
  console.log(`workerd: ${workerd} ${args.join(' ')}`);
  // Same process group as this script: killing the group stops both.
  const child = spawn(workerd, args, { stdio: ['ignore', 'inherit', 'inherit'] });
  let exited = false;
  child.on('exit', (code, signal) => {
    exited = true;
    process.stderr.write(`two-isolates: workerd exited (${signal ?? code})\n`);
    process.exit(code === 0 ? 1 : code ?? 1);
  });
  const stop = () => {
    if (!exited) child.kill('SIGKILL');
    if (ownDir) fs.rmSync(o.dir, { recursive: true, force: true });
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const a = `http://127.0.0.1:${o.portA}`;
  const b = `http://127.0.0.1:${o.portB}`;
  const deadline = Date.now() + 60_000;
  while (!(await answers(`${a}/healthz`)) || !(await answers(`${b}/healthz`))) {
    if (Date.now() > deadline) {
      process.stderr.write('two-isolates: the gateways did not answer /healthz within 60 s\n');
      child.kill('SIGKILL');
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`config: ${configPath}`);
  console.log(`ready A=${a} B=${b}`);
}

main().catch((e) => fail(1, e?.stack ?? String(e)));
