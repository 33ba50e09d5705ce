// In-memory stand-in for Workers KV, for the HTTP benchmark (scripts/bench-http.sh).
// workerd turns calls on a `kvNamespace` binding into HTTP requests to this service:
// GET/PUT/DELETE /<url-encoded key>?urlencoded=true (404 = missing key), and
// GET /?prefix=&key_count_limit=&cursor= to list. KV_DEBUG (a text binding) logs each request.
const store = new Map();

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const key = decodeURIComponent(url.pathname.slice(1));
    if (env.KV_DEBUG) console.log(request.method, request.url);
    switch (request.method) {
      case "GET":
        if (key === "") return list(url);
        if (!store.has(key)) return new Response(null, { status: 404 });
        return new Response(store.get(key));
      case "PUT":
        store.set(key, await request.text());
        return new Response(null, { status: 200 });
      case "DELETE":
        store.delete(key);
        return new Response(null, { status: 200 });
      default:
        return new Response(null, { status: 405 });
    }
  },
};

// Enough of the list protocol for the admin API (the benchmark itself never lists).
function list(url) {
  const prefix = url.searchParams.get("prefix") ?? "";
  const limit = Number(url.searchParams.get("key_count_limit") ?? 1000);
  const after = url.searchParams.get("cursor") ?? "";
  const names = [...store.keys()].filter((k) => k.startsWith(prefix) && k > after).sort();
  const page = names.slice(0, limit);
  const complete = page.length === names.length;
  const body = { keys: page.map((name) => ({ name })), list_complete: complete };
  if (!complete) body.cursor = page[page.length - 1];
  return Response.json(body);
}
