// Replaces worker-build's default entry with a plain module handler, schedules
// wasm-bindgen-futures' microtasks with a native promise instead of the runtime's
// `queueMicrotask` (below), then minifies the bundle.
//
//   node scripts/entry.mjs build/index.js
//
// worker-build 0.8.7 exports the fetch handler as a `WorkerEntrypoint` class wrapped in a
// `Proxy`: for every request the runtime constructs the class through a `construct` trap, which
// builds a second `Proxy` around the instance, whose `get` trap wraps `fetch` in a third, async
// one. That is its panic recovery (after a wasm trap, the next request re-instantiates the
// module), and it cost about 12% of a forwarded request's CPU (BENCHMARKS.md, section 2).
//
// Here the default export becomes `{ fetch(request, env, ctx) }`, a module handler the runtime
// calls directly, with the same recovery: `checkReinitialize()` before the call (a trap seen
// earlier re-instantiates the module first), and `handleMaybeCritical` on a synchronous throw or
// a rejected promise (a trap in a later poll of the handler reaches the `error` listener the
// shim already installs). The Durable Object class keeps worker-build's wrapper (its instances
// must be rebuilt after a re-instantiation, and it is called once per admin or registry
// request, not per gateway request). `tests/e2e/panic.rs` forces a trap and checks recovery.
//
// worker-build must have run with NO_MINIFY=1: the shim's text is matched exactly, and the build
// fails if it is not there (a worker-build upgrade must be looked at, not silently skipped).
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const file = process.argv[2];
if (!file) {
  console.error("usage: node scripts/entry.mjs <bundle.js>");
  process.exit(2);
}
const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const ESBUILD = process.env.ESBUILD_BIN || join(ROOT, "node_modules/@esbuild/linux-x64/bin/esbuild");

const text = readFileSync(file, "utf8");
const needles = [
  "var shim_default = new Proxy(Entrypoint, classProxyHooks);",
  "function checkReinitialize() {",
  "function handleMaybeCritical(e) {",
  "Entrypoint.prototype.fetch = function",
];
for (const n of needles) {
  const count = text.split(n).length - 1;
  if (count !== 1) {
    console.error(`scripts/entry.mjs: expected exactly one "${n}" in ${file}, found ${count}.`);
    console.error("worker-build's shim changed: look at its src/js/shim.js before adapting this.");
    process.exit(1);
  }
}
const entry = `var shim_default = {
  // keygate (scripts/entry.mjs): a module handler, called without per-request Proxies.
  fetch(request, env, ctx) {
    checkReinitialize();
    let result;
    try {
      result = Entrypoint.prototype.fetch.call({ env, ctx }, request);
    } catch (e) {
      handleMaybeCritical(e);
      throw e;
    }
    return result.then(undefined, (e) => {
      handleMaybeCritical(e);
      throw e;
    });
  },
};`;
// wasm-bindgen-futures schedules every task poll (the handler's first, and one after each
// awaited promise settles) with the global `queueMicrotask`. In workerd that is a runtime API
// call, about 7% of a forwarded request's CPU (BENCHMARKS.md); `Promise.resolve().then(f)`
// queues the same microtask natively in V8. One difference: an exception in the callback
// becomes an unhandled rejection instead of an uncaught error, so the entry listens for
// `unhandledrejection` too (a wasm trap in a later poll still marks the module for
// re-instantiation).
const microtask = /(__wbg_queueMicrotask_[0-9a-f]+: function\(arg0\) \{\s*)queueMicrotask\(arg0\);/g;
const microtaskCount = (text.match(microtask) || []).length;
if (microtaskCount !== 1) {
  console.error(`scripts/entry.mjs: expected exactly one queueMicrotask import in ${file}, found ${microtaskCount}.`);
  process.exit(1);
}
const rejection = `addEventListener("unhandledrejection", (e) => {
  handleMaybeCritical(e.reason);
});
`;
const patched = text
  .replace(needles[0], rejection + entry)
  .replace(microtask, "$1Promise.resolve().then(arg0);");
const tmp = `${file}.entry.js`;
writeFileSync(tmp, patched);
// Transform only (no bundling): the module's imports stay as they are.
execFileSync(ESBUILD, [tmp, "--minify", "--format=esm", "--log-level=warning", `--outfile=${file}`, "--allow-overwrite"], {
  stdio: "inherit",
});
rmSync(tmp, { force: true });
