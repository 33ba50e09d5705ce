// Small shared pieces: labelled fields with their errors, a modal dialog, paging, formatting.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from './api.js';

/** A dash for what the gateway does not report (fields a newer gateway adds). */
export const DASH = '—';

export function when(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return <time datetime={iso}>{d.toISOString().slice(0, 16).replace('T', ' ')} UTC</time>;
}

/** `credits_remaining`: absent (an older gateway) is a dash, null is unmetered. */
export function credits(key) {
  if (!key || !('credits_remaining' in key) || key.credits_remaining === undefined) return DASH;
  return key.credits_remaining === null ? 'unmetered' : count(key.credits_remaining);
}

/** A count of credits for `credits_leased` and the like: null (unmetered) and absent are a dash. */
export const count = (n) => (typeof n === 'number' ? n.toLocaleString('en-US') : DASH);

export function refill(key) {
  const r = key && key.refill;
  if (!r) return DASH;
  if (r.interval === 'month') return `to ${count(r.amount)} on day ${r.day || 1} of every month`;
  return `to ${count(r.amount)} every day`;
}

export const text = (v) => (v === undefined || v === null || v === '' ? DASH : String(v));

export function Status({ status }) {
  return <span class={`badge ${status}`}>{status || DASH}</span>;
}

/**
 * A labelled control with its hint and its error next to it: `control` receives the props that
 * tie it to them (`id`, `aria-describedby`, `aria-invalid`).
 */
export function Field({ id, label, hint, error, control }) {
  const hintId = hint ? `${id}-hint` : undefined;
  const errId = error ? `${id}-error` : undefined;
  const described = [hintId, errId].filter(Boolean).join(' ') || undefined;
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {control({ id, 'aria-describedby': described, 'aria-invalid': error ? 'true' : undefined })}
      {hint && <p class="hint" id={hintId}>{hint}</p>}
      {error && <p class="error" id={errId} data-field-error={id}>{error}</p>}
    </div>
  );
}

export function FormError({ error }) {
  if (!error) return null;
  return (
    <div class="banner bad" role="alert">
      <strong>{error.problem?.title || 'Error'}</strong>
      {error.status ? ` (${error.status})` : ''}: {error.message}
      {error.problem?.request_id && <div class="hint">Request id: <code>{error.problem.request_id}</code></div>}
    </div>
  );
}

/**
 * A modal `<dialog>`: focus stays inside, Escape asks `onDismiss`. With `locked`, nothing closes
 * it (Escape included: a browser may close a dialog without asking after repeated Escapes, so
 * it is reopened) until the caller stops rendering it.
 */
export function Dialog({ title, labelId, locked, onDismiss, children }) {
  const ref = useRef(null);
  const lockedRef = useRef(locked);
  lockedRef.current = locked;
  const dismissRef = useRef(onDismiss);
  dismissRef.current = onDismiss;
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    const onCancel = (e) => {
      e.preventDefault();
      if (!lockedRef.current && dismissRef.current) dismissRef.current();
    };
    const onClose = () => {
      if (d.isConnected && lockedRef.current) d.showModal();
    };
    d.addEventListener('cancel', onCancel);
    d.addEventListener('close', onClose);
    return () => {
      d.removeEventListener('cancel', onCancel);
      d.removeEventListener('close', onClose);
      if (d.open) d.close();
    };
  }, []);
  return (
    <dialog ref={ref} aria-labelledby={labelId}>
      <h2 id={labelId}>{title}</h2>
      {children}
    </dialog>
  );
}

/** Lines or commas of a textarea → trimmed, non-empty entries. */
export const listOf = (s) => (s || '').split(/[\n,]/).map((x) => x.trim()).filter(Boolean);

/**
 * One page at a time of a cursor-paged admin list (`/admin/keys`, `/admin/audit`). A change of
 * `query` starts again at page 1; `reload()` fetches the current page again.
 */
export function usePages(path, query) {
  const q = JSON.stringify(query);
  const [seen, setSeen] = useState({ q, cursors: [''] }); // the cursor of each page seen so far
  const cursors = seen.q === q ? seen.cursors : [''];
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const [reloads, setReloads] = useState(0);
  const cursor = cursors[cursors.length - 1];
  useEffect(() => {
    let live = true;
    setError(null);
    api('GET', path, { query: { ...query, cursor } })
      .then(({ data }) => live && setPage(data))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [path, q, cursor, reloads]);
  return {
    page, error, number: cursors.length,
    next: () => setSeen({ q, cursors: [...cursors, page.cursor] }),
    previous: () => setSeen({ q, cursors: cursors.slice(0, -1) }),
    reload: () => setReloads((n) => n + 1),
  };
}

export function Pager({ pages }) {
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled={pages.number < 2} onClick={pages.previous}>Previous page</button>
      <span>Page {pages.number}</span>
      <button type="button" disabled={!pages.page?.cursor} onClick={pages.next}>Next page</button>
    </nav>
  );
}
