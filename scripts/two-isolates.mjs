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
//     `durableObjectNamespace = (className = "Registry", serviceName = "gateway-a")`;
//   - the Workers Rate Limiting bindings (`[[ratelimits]]` of wrangler.toml, or --ratelimits):
//     each is a workerd `wrapped` binding, built by the internal module
//     "keygate-internal:ratelimit" (RATELIMIT_BINDING below, declared in the config's
//     `extensions`) from inner bindings `fetcher` (the `ratelimit` service), `namespaceId`,
//     `limit` and `period`. Its object is of a class named `Ratelimit` (workers-rs 0.8.7's
//     `env.rate_limiter(name)` checks `constructor.name === "Ratelimit"`) whose
//     `limit({key})` resolves to `{success: boolean}`. Every call goes to RATELIMIT_WORKER below:
//     one in-memory counter per namespace_id + key in fixed windows of `period` seconds aligned
//     to the clock (as miniflare's), shared by both gateways, as one Cloudflare location shares
//     one limiter. Each call counts until `limit` is reached; later calls in the window fail.
//     The counters use real time, not any test clock of the worker's.
// KV_WORKER counts what it serves: single-key GETs (hits and misses, in total and per key),
// list requests, PUTs and DELETEs; --port-control exposes the counters of that same service.
// Outbound fetches (the gateway forwarding to ORIGIN) may reach loopback addresses only.
//
// Usage:
//   node scripts/two-isolates.mjs --port-a PORT --port-b PORT --origin URL --admin-token TOKEN
//       [--policy FILE.json] [--pepper P] [--no-registry] [--dir DIR]
//       [--ratelimits FILE.json] [--var NAME=VALUE]... [--port-control PORT]
//       [--build DIR] [--workerd PATH]
//   --policy       the POLICY var as a JSON file; default: [vars.POLICY] of wrangler.toml
//   --no-registry  leave the Durable Object namespace and the REGISTRY binding out (for a build
//                  that does not export `Registry` yet). Without it, a build that does not export
//                  `Registry` is an error (exit 3), not a silent fallback.
//   --dir          where the config and the Durable Object storage go; default: a fresh temp dir
//   --ratelimits   the rate limiting bindings as a JSON file, e.g.
//                    [{"name": "LIMITER", "namespace_id": "1001", "simple": {"limit": 10, "period": 60}}]
//                  replacing the top-level [[ratelimits]] of wrangler.toml (default: those; none
//                  when it has none; `[]` gives none). Names must be unique and must not clash
//                  with the other bindings; limit and period are positive integers (Cloudflare
//                  accepts a period of 10 or 60 only; any is accepted here, for short tests).
//   --var          NAME=VALUE: one more text var for both gateways (repeatable), e.g.
//                  `--var KEYGATE_TEST_CLOCK=1`. NAME must not clash with another binding.
//   --port-control serve a control socket on 127.0.0.1:PORT (the `control` entrypoint of the
//                  KV service, so it reads the very counters the gateways' KV calls update):
//                    GET  /kv-stats        -> {"gets": N, "lists": M, "puts": P, "deletes": D,
//                                              "gets_by_key": {"<key>": n, ...}}
//                    POST /kv-stats/reset  -> zeroes them; answers the counts it replaced
// Prints `ready A=http://127.0.0.1:PA B=http://127.0.0.1:PB` once both answer /healthz (followed
// by ` control=http://127.0.0.1:PC` with --port-control, once that answers too), and the
// command line it ran workerd with. Exit codes: 2 bad arguments (or a bad --ratelimits/--var),
// 3 no `Registry` export, 1 (or workerd's own code) anything else. Runs until killed: stop it
// by its process group (`kill -- -PGID`); on SIGTERM/SIGINT it also stops workerd itself.
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
  const opts = { registry: true, vars: [] };
  const flags = { '--no-registry': 'registry' };
  const values = {
    '--port-a': 'portA', '--port-b': 'portB', '--origin': 'origin', '--admin-token': 'adminToken',
    '--policy': 'policy', '--pepper': 'pepper', '--dir': 'dir', '--build': 'build',
    '--workerd': 'workerd', '--ratelimits': 'ratelimits', '--port-control': 'portControl',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a in flags) opts[flags[a]] = false;
    else if (a in values && i + 1 < argv.length) opts[values[a]] = argv[++i];
    else if (a === '--var' && i + 1 < argv.length) {
      const v = argv[++i];
      const eq = v.indexOf('=');
      if (eq < 1) fail(2, `--var ${JSON.stringify(v)}: expected NAME=VALUE`);
      opts.vars.push([v.slice(0, eq), v.slice(eq + 1)]);
    } else fail(2, `unknown or incomplete argument ${a}`);
  }
  for (const k of ['portA', 'portB', 'origin', 'adminToken']) {
    if (!opts[k]) fail(2, `missing --${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
  }
  if (opts.portControl !== undefined && !/^\d+$/.test(opts.portControl)) {
    fail(2, `--port-control ${JSON.stringify(opts.portControl)} is not a port number`);
  }
  return opts;
}

/**
 * [vars.POLICY], compatibility_date, compatibility_flags and the top-level [[ratelimits]] of
 * wrangler.toml, as JSON (python3's tomllib, as build.sh).
 */
function wranglerToml() {
  const out = execFileSync('python3', ['-c', `
import json, sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
print(json.dumps({"policy": cfg["vars"]["POLICY"], "date": cfg["compatibility_date"],
                  "flags": cfg.get("compatibility_flags", []),
                  "ratelimits": cfg.get("ratelimits", [])}))
`, path.join(ROOT, 'wrangler.toml')]);
  return JSON.parse(out.toString());
}

const BINDING_NAME = /^[A-Za-z_$][\w$]*$/;

/**
 * Checks rate limiting bindings ([{name, namespace_id, simple: {limit, period}}]) and returns
 * them as [{name, namespaceId, limit, period}]; `where` names their source in messages.
 */
function checkRatelimits(list, where) {
  const bad = (msg) => fail(2, `${where}: ${msg}`);
  if (!Array.isArray(list)) bad('expected an array of {name, namespace_id, simple: {limit, period}}');
  const seen = new Set();
  return list.map((r, i) => {
    const at = `ratelimit #${i + 1}${typeof r?.name === 'string' ? ` (${r.name})` : ''}`;
    if (typeof r !== 'object' || r === null || Array.isArray(r)) bad(`${at} is not an object`);
    if (typeof r.name !== 'string' || !BINDING_NAME.test(r.name)) bad(`${at}: "name" must be a binding name`);
    if (seen.has(r.name)) bad(`${at}: the name ${r.name} is used twice`);
    seen.add(r.name);
    // Wrangler wants a string; a TOML integer is taken as its decimal text.
    const ns = typeof r.namespace_id === 'number' && Number.isInteger(r.namespace_id)
      ? String(r.namespace_id) : r.namespace_id;
    if (typeof ns !== 'string' || ns === '') bad(`${at}: "namespace_id" must be a non-empty string`);
    const s = r.simple;
    if (typeof s !== 'object' || s === null) bad(`${at}: "simple" must be {limit, period}`);
    for (const k of ['limit', 'period']) {
      if (!Number.isInteger(s[k]) || s[k] < 1) bad(`${at}: simple.${k} must be a positive integer`);
    }
    return { name: r.name, namespaceId: ns, limit: s.limit, period: s.period };
  });
}

/** The --var pairs, checked against each other and against `taken` (the script's own bindings). */
function checkVars(vars, taken) {
  const seen = new Set();
  for (const [name] of vars) {
    if (!BINDING_NAME.test(name)) fail(2, `--var ${name}: not a binding name`);
    if (taken.has(name)) fail(2, `--var ${name}: clashes with a binding of that name (one of the script's own or a rate limiter)`);
    if (seen.has(name)) fail(2, `--var ${name}: given twice`);
    seen.add(name);
  }
  return vars;
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
// What the gateways asked for, read (and zeroed) through the \`control\` entrypoint below: the
// same module, so the same isolate and the same counters.
let stats;
function resetStats() {
  const old = stats;
  stats = { gets: 0, lists: 0, puts: 0, deletes: 0, gets_by_key: Object.create(null) };
  return old;
}
resetStats();
function live(key) {
  const e = store.get(key);
  if (e && e.expiresAt !== null && e.expiresAt <= now()) { store.delete(key); return undefined; }
  return e;
}
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === '/' && request.method === 'GET') {
      stats.lists++;
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
      stats.gets++;
      stats.gets_by_key[key] = (stats.gets_by_key[key] ?? 0) + 1;
      const e = live(key);
      if (!e) return new Response(null, { status: 404 });
      const headers = e.metadata !== null ? { 'CF-KV-Metadata': e.metadata } : {};
      return new Response(e.value, { headers });
    }
    if (request.method === 'PUT') {
      stats.puts++;
      const value = new Uint8Array(await request.arrayBuffer());
      let expiresAt = null;
      if (url.searchParams.has('expiration')) expiresAt = Number(url.searchParams.get('expiration')) * 1000;
      if (url.searchParams.has('expiration_ttl')) expiresAt = now() + Number(url.searchParams.get('expiration_ttl')) * 1000;
      store.set(key, { value, expiresAt, metadata: request.headers.get('CF-KV-Metadata') });
      return new Response(null, { status: 200 });
    }
    if (request.method === 'DELETE') {
      stats.deletes++;
      store.delete(key);
      return new Response(null, { status: 200 });
    }
    return new Response('method not allowed', { status: 405 });
  },
};
// The control socket (--port-control) is bound to this entrypoint; the gateways' KV bindings
// reach only the default one.
export const control = {
  async fetch(request) {
    const { pathname } = new URL(request.url);
    if (pathname === '/kv-stats' && request.method === 'GET') return Response.json(stats);
    if (pathname === '/kv-stats/reset' && request.method === 'POST') return Response.json(resetStats());
    return Response.json({ error: 'not found: GET /kv-stats, POST /kv-stats/reset' }, { status: 404 });
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

const RATELIMIT_BINDING = `
// The internal module behind every rate limiting binding (a workerd \`wrapped\` binding): workerd
// calls the default export with the inner bindings and hands the gateway what it returns.
// The class name matters: workers-rs checks \`constructor.name === "Ratelimit"\`.
class Ratelimit {
  #fetcher; #namespaceId; #limit; #period;
  constructor(env) {
    this.#fetcher = env.fetcher;
    this.#namespaceId = env.namespaceId;
    this.#limit = env.limit;
    this.#period = env.period;
  }
  async limit(options) {
    if (typeof options !== 'object' || options === null) throw new TypeError('limit() takes {key}');
    const { key } = options;
    if (typeof key !== 'string') throw new TypeError('limit(): key must be a string');
    const response = await this.#fetcher.fetch('http://ratelimit/limit', {
      method: 'POST',
      body: JSON.stringify({ namespaceId: this.#namespaceId, key, limit: this.#limit, period: this.#period }),
    });
    if (!response.ok) throw new Error('ratelimit service: ' + response.status + ' ' + await response.text());
    const { success } = await response.json();
    return { success };
  }
}
export default function (env) {
  return new Ratelimit(env);
}
`;

const RATELIMIT_WORKER = `
// Every gateway's rate limiting bindings count here: fixed windows of \`period\` seconds aligned
// to the clock, one counter per namespace_id + key, in memory.
const buckets = new Map(); // JSON [namespaceId, key] -> { window, until, count }
let sweptAt = 0;
export default {
  async fetch(request) {
    if (request.method !== 'POST' || new URL(request.url).pathname !== '/limit') {
      return new Response('not found', { status: 404 });
    }
    const { namespaceId, key, limit, period } = await request.json();
    const now = Date.now();
    const window = Math.floor(now / (period * 1000));
    if (now - sweptAt > 60_000) { // drop the windows that are over
      sweptAt = now;
      for (const [k, b] of buckets) if (b.until <= now) buckets.delete(k);
    }
    const id = JSON.stringify([namespaceId, key]);
    let b = buckets.get(id);
    if (!b || b.window !== window) {
      b = { window, until: (window + 1) * period * 1000, count: 0 };
      buckets.set(id, b);
    }
    if (b.count >= limit) return Response.json({ success: false });
    b.count++;
    return Response.json({ success: true });
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
  o = { ratelimits: [], vars: [], ...o };
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
    ...o.ratelimits.map((r) => ratelimitBinding(r)),
    ...o.vars.map(([name, value]) => `(name = ${capStr(name)}, text = ${capStr(value)})`),
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
    ...(o.ratelimits.length
      ? [`(name = "ratelimit", worker = (compatibilityDate = "2024-01-01", modules = [(name = "ratelimit.js", esModule = embed "ratelimit.js")]))`]
      : []),
  ];
  const sockets = [
    `(name = "a", address = ${capStr(`127.0.0.1:${o.portA}`)}, http = (), service = "gateway-a")`,
    `(name = "b", address = ${capStr(`127.0.0.1:${o.portB}`)}, http = (), service = "gateway-b")`,
    // The KV service's `control` entrypoint: same module, same counters as the KEYS bindings'.
    ...(o.portControl
      ? [`(name = "control", address = ${capStr(`127.0.0.1:${o.portControl}`)}, http = (), service = (name = "kv", entrypoint = "control"))`]
      : []),
  ];
  // The module the wrapped rate limiting bindings are built by; internal: the gateways' own code
  // cannot import it.
  const extensions = o.ratelimits.length
    ? `
  extensions = [
    (modules = [(name = ${capStr(RATELIMIT_MODULE)}, internal = true, esModule = embed "ratelimit-binding.js")]),
  ],`
    : '';
  return `# Generated by scripts/two-isolates.mjs: two gateway isolates sharing KV, cache and Registry.
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    ${services.join(',\n    ')}
  ],
  sockets = [
    ${sockets.join(',\n    ')},
  ],${extensions}
);
`;
}

const RATELIMIT_MODULE = 'keygate-internal:ratelimit';

/** One rate limiting binding: a `Ratelimit` built by RATELIMIT_MODULE, counting in `ratelimit`. */
function ratelimitBinding(r) {
  return `(name = ${capStr(r.name)}, wrapped = (moduleName = ${capStr(RATELIMIT_MODULE)}, innerBindings = [` +
    `(name = "fetcher", service = "ratelimit"), ` +
    `(name = "namespaceId", text = ${capStr(r.namespaceId)}), ` +
    `(name = "limit", json = ${capStr(JSON.stringify(r.limit))}), ` +
    `(name = "period", json = ${capStr(JSON.stringify(r.period))})]))`;
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
  if (o.ratelimits) {
    let list;
    try {
      list = JSON.parse(fs.readFileSync(o.ratelimits, 'utf8'));
    } catch (e) {
      fail(2, `--ratelimits ${o.ratelimits}: ${e.message}`);
    }
    o.ratelimits = checkRatelimits(list, `--ratelimits ${o.ratelimits}`);
  } else {
    o.ratelimits = checkRatelimits(toml.ratelimits, `[[ratelimits]] of ${path.join(ROOT, 'wrangler.toml')}`);
  }
  const taken = new Set(['KEYS', 'ORIGIN', 'POLICY', 'ADMIN_TOKEN', 'KEY_PEPPER', 'REGISTRY']);
  for (const r of o.ratelimits) {
    if (taken.has(r.name)) fail(2, `rate limiting binding ${r.name}: clashes with the ${r.name} binding the script makes itself`);
  }
  for (const r of o.ratelimits) taken.add(r.name);
  checkVars(o.vars, taken);
  const ownDir = !o.dir;
  o.dir = path.resolve(o.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'keygate-two-isolates-')));
  fs.mkdirSync(path.join(o.dir, 'do'), { recursive: true });
  fs.writeFileSync(path.join(o.dir, 'kv.js'), KV_WORKER);
  fs.writeFileSync(path.join(o.dir, 'cache.js'), CACHE_WORKER);
  if (o.ratelimits.length) {
    fs.writeFileSync(path.join(o.dir, 'ratelimit.js'), RATELIMIT_WORKER);
    fs.writeFileSync(path.join(o.dir, 'ratelimit-binding.js'), RATELIMIT_BINDING);
  }
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
  const control = o.portControl ? `http://127.0.0.1:${o.portControl}` : null;
  const deadline = Date.now() + 60_000;
  while (!(await answers(`${a}/healthz`)) || !(await answers(`${b}/healthz`)) ||
    (control && !(await answers(`${control}/kv-stats`)))) {
    if (Date.now() > deadline) {
      process.stderr.write(`two-isolates: the gateways did not answer /healthz${control ? ' (or the control socket /kv-stats)' : ''} within 60 s\n`);
      child.kill('SIGKILL');
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`config: ${configPath}`);
  console.log(`ready A=${a} B=${b}${control ? ` control=${control}` : ''}`);
}

main().catch((e) => fail(1, e?.stack ?? String(e)));
