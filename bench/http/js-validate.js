// The reference validator of scripts/bench-http.sh: what a straightforward hand-written
// JavaScript API-key check costs in the same workerd. Bearer key -> Web Crypto SHA-256 -> one KV
// read (`jsval:<hex>`, a record {"id", "scopes"} of its own simple format, written by the
// benchmark) -> a scope check for the path -> forward without the key, with X-Key-Id.
// A missing, unknown or under-scoped key is answered with a small problem+json.
const encoder = new TextEncoder();
const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, "0"));

// Path prefix -> the scope it needs (the shape of keygate's /licenses/* route).
const ROUTES = [["/licenses/", "license:read"]];

function hex(buffer) {
  const bytes = new Uint8Array(buffer);
  let out = "";
  for (let i = 0; i < bytes.length; i++) out += HEX[bytes[i]];
  return out;
}

function deny(status, code) {
  return new Response(JSON.stringify({ type: "about:blank", status, code }), {
    status,
    headers: {
      "content-type": "application/problem+json",
      "www-authenticate": 'Bearer realm="js-validate"',
    },
  });
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const route = ROUTES.find(([prefix]) => url.pathname.startsWith(prefix));
    if (!route) return deny(404, "no_route");
    const auth = request.headers.get("authorization") ?? "";
    const space = auth.indexOf(" ");
    if (space < 0 || auth.slice(0, space).toLowerCase() !== "bearer") return deny(401, "missing_key");
    const key = auth.slice(space + 1).trim();
    const digest = await crypto.subtle.digest("SHA-256", encoder.encode(key));
    const record = await env.KEYS.get("jsval:" + hex(digest), { type: "json", cacheTtl: 30 });
    if (record === null) return deny(401, "invalid_key");
    if (!record.scopes.includes(route[1])) return deny(403, "insufficient_scope");
    const headers = new Headers(request.headers);
    headers.delete("authorization");
    headers.set("x-key-id", record.id);
    return fetch(env.ORIGIN + url.pathname + url.search, {
      method: request.method,
      headers,
      body: request.body,
      redirect: "manual",
    });
  },
};
