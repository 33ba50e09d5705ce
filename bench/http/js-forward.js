// The floor of scripts/bench-http.sh: the plainest JavaScript forwarder. Every request goes to
// ORIGIN with its path, query, method, headers and body, and the origin's response is returned
// as it is. Whatever keygate costs above this is the price of its checks and its glue.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.ORIGIN + url.pathname + url.search, request);
  },
};
