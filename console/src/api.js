// The console's only way out: the public admin API of this worker (same origin), with the
// credential entered once per browser session. It lives in sessionStorage (gone with the tab),
// never in a URL or localStorage, and is sent only as an Authorization header.

const STORE = 'keygate.admin-credential';

export const session = {
  get: () => sessionStorage.getItem(STORE),
  set: (credential) => sessionStorage.setItem(STORE, credential),
  clear: () => sessionStorage.removeItem(STORE),
};

/** An answer other than 2xx: its status and RFC 9457 problem body. */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
    this.code = this.problem.code || '';
  }

  /** `{field: message}` for a validation error that names its field (`invalid_field`). */
  get fields() {
    const p = this.problem;
    if (p.code !== 'invalid_field') return {};
    let field = p.field || '';
    // serde reports an unknown member at the top level; its message names it.
    const unknown = !field && /unknown field `([A-Za-z_]+)`/.exec(p.detail || '');
    if (unknown) field = unknown[1];
    const base = field.split(/[.[]/)[0];
    if (!base) return {};
    const key = base === 'expires_in' || base === 'expires_at' ? 'expiry' : base;
    return { [key]: p.detail || p.title };
  }
}

let onUnauthorized = () => {};
/** Called when the API refuses the stored credential: the console asks for it again. */
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

/**
 * `api('PATCH', '/admin/keys/x', {body, ifMatch})` → `{data, etag, status}`; throws ApiError.
 * `query` values that are empty are left out.
 */
export async function api(method, path, { body, ifMatch, idempotencyKey, query, credential } = {}) {
  const headers = { Authorization: `Bearer ${credential || session.get() || ''}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== '') params.set(k, v);
  const url = params.size ? `${path}?${params}` : path;
  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
      redirect: 'error',
    });
  } catch (e) {
    throw new ApiError(0, { title: 'Network error', detail: `The gateway could not be reached (${e.message}).` });
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text.slice(0, 200) };
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    if (res.status === 401 && !credential) onUnauthorized(err);
    throw err;
  }
  return { data, etag: res.headers.get('ETag'), status: res.status };
}

/** A fresh Idempotency-Key, so that a retried create or rotate is not done twice. */
export const newIdempotencyKey = () => crypto.randomUUID();

let documentOnce;
/** The served OpenAPI document (`GET /admin/openapi.json`), fetched once; null if unavailable. */
function openapiDocument() {
  documentOnce ??= api('GET', '/admin/openapi.json').then(({ data }) => data)
    .catch(() => { documentOnce = undefined; return null; });
  return documentOnce;
}

/**
 * The scopes the route policy mentions, from the served OpenAPI document (each protected
 * gateway operation lists them in `x-keygate-scopes`). A path value in a template
 * (`keyring.{ring}.encrypt`) becomes the one-segment wildcard (`keyring.*.encrypt`).
 */
export async function policyScopes() {
  const data = await openapiDocument();
  const found = new Set();
  for (const item of Object.values(data?.paths || {})) {
    for (const op of Object.values(item || {})) {
      const s = op && op['x-keygate-scopes'];
      if (!s) continue;
      for (const t of [...(s.all || []), ...(s.any || [])]) found.add(t.replace(/\{[^}]*\}/g, '*'));
    }
  }
  return [...found].sort();
}

/**
 * The rate tiers a key may name: the `enum` of the `RateTier` schema, which the served
 * document fills in from the policy's `limits.tiers` (absent when it declares none).
 * `{tiers, known}`: `known` is false when the document or its `RateTier` schema is missing (an
 * older gateway), so the form can fall back to free text.
 */
export async function policyTiers() {
  const schema = (await openapiDocument())?.components?.schemas?.RateTier;
  return {
    tiers: Array.isArray(schema?.enum) ? schema.enum.filter((t) => typeof t === 'string') : [],
    known: !!schema,
  };
}
