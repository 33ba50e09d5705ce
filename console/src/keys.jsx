// The key list (filters, pages, an actions menu per key) and the key detail (edit with If-Match,
// enable/disable, rotate, revoke, delete, credits and their top-up, usage per day).
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, newIdempotencyKey } from './api.js';
import { CreateWizard, ShowOnce } from './create.jsx';
import { DetailsSection, LimitsSection, ScopesSection, bodyOf, clientErrors, formOf, isMetered } from './keyform.jsx';
import { DASH, Dialog, Field, FormError, Pager, Status, count, credits, refill, text, usePages, when } from './ui.jsx';

const PAGE = 20;
const path = (id) => `/admin/keys/${encodeURIComponent(id)}`;
/** `rate_tier`: null is none (the route's limit applies); absent (an older gateway) is a dash. */
const tier = (k) => (k.rate_tier ? k.rate_tier : k.rate_tier === null ? 'none' : DASH);
/** `last_used_at`: null is never (as far as the flushed usage says); absent is a dash. */
const lastUsed = (k) => (k.last_used_at ? when(k.last_used_at) : k.last_used_at === null ? 'not recorded yet' : DASH);

export function KeyList({ go }) {
  const [filters, setFilters] = useState({ group: '', environment: '', status: '' });
  const [draftGroup, setDraftGroup] = useState('');
  const pages = usePages('/admin/keys', { limit: PAGE, ...filters });
  const { page, error } = pages;
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState(null);
  const [revoking, setRevoking] = useState(null);
  const filter = (k, v) => setFilters({ ...filters, [k]: v });

  return (
    <>
      <h1>API keys</h1>
      <div class="actions">
        <button type="button" class="primary" onClick={() => setCreating(true)}>Create key</button>
      </div>
      <form class="filters" role="search" aria-label="Filter keys"
        onSubmit={(e) => { e.preventDefault(); filter('group', draftGroup.trim()); }}>
        <Field id="filter-group" label="Group"
          control={(p) => <input {...p} type="text" value={draftGroup} onInput={(e) => setDraftGroup(e.currentTarget.value)} />} />
        <Field id="filter-environment" label="Environment"
          control={(p) => (
            <select {...p} value={filters.environment} onChange={(e) => filter('environment', e.currentTarget.value)}>
              <option value="">Any</option><option value="live">live</option><option value="test">test</option>
            </select>
          )} />
        <Field id="filter-status" label="Status"
          control={(p) => (
            <select {...p} value={filters.status} onChange={(e) => filter('status', e.currentTarget.value)}>
              <option value="">Any</option>
              {['active', 'disabled', 'expired', 'revoked'].map((s) => <option value={s}>{s}</option>)}
            </select>
          )} />
        <button type="submit">Apply</button>
      </form>
      <FormError error={error} />
      {page === null && !error ? <p role="status">Loading keys…</p> : null}
      {page && (
        <>
          <table class="cards" id="key-table">
            <caption>
              {page.keys.length ? `Page ${pages.number}: ${page.keys.length} key${page.keys.length === 1 ? '' : 's'}` : 'No keys match.'}
            </caption>
            <thead>
              <tr>
                {['Name', 'Tag', 'Group', 'Environment', 'Scopes', 'Status', 'Created', 'Expires', 'Last used', 'Rate tier', 'Credits', 'Actions']
                  .map((h) => <th scope="col">{h}</th>)}
              </tr>
            </thead>
            <tbody>
              {page.keys.map((k) => (
                <tr key={k.id} data-key-id={k.id}>
                  <td data-label="Name"><a href={`#/keys/${k.id}`}>{k.name}</a></td>
                  <td data-label="Tag"><code>{text(k.tag)}</code></td>
                  <td data-label="Group">{text(k.group)}</td>
                  <td data-label="Environment">{k.environment}</td>
                  <td data-label="Scopes" class="scopes"><code>{k.scopes.join(' ') || DASH}</code></td>
                  <td data-label="Status"><Status status={k.status} /></td>
                  <td data-label="Created">{when(k.created_at)}</td>
                  <td data-label="Expires">{k.expires_at ? when(k.expires_at) : 'never'}</td>
                  <td data-label="Last used">{lastUsed(k)}</td>
                  <td data-label="Rate tier">{tier(k)}</td>
                  <td data-label="Credits">{credits(k)}</td>
                  <td data-label="Actions">
                    <details class="menu">
                      <summary aria-label={`Actions for ${k.name}`}>Actions</summary>
                      <ul>
                        <li><a href={`#/keys/${k.id}`}>Details</a></li>
                        {k.status !== 'revoked' && (
                          <li><button type="button" class="danger" onClick={() => setRevoking(k)}>Revoke…</button></li>
                        )}
                      </ul>
                    </details>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <Pager pages={pages} />
        </>
      )}
      {creating && (
        <CreateWizard group={filters.group} onCancel={() => setCreating(false)}
          onCreated={(c) => { setCreating(false); setCreated(c); }} />
      )}
      {created && (
        <ShowOnce title="Key created" created={created}
          onDone={() => { const id = created.record.id; setCreated(null); go(`#/keys/${id}`); }} />
      )}
      {revoking && (
        <RevokeDialog keyRecord={revoking} onCancel={() => setRevoking(null)}
          onRevoked={() => { setRevoking(null); pages.reload(); }} />
      )}
    </>
  );
}

/** Revoking is permanent: the operator types the key's name to confirm. */
export function RevokeDialog({ keyRecord, onCancel, onRevoked }) {
  const [typed, setTyped] = useState('');
  const [reason, setReason] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const revoke = async (e) => {
    e.preventDefault();
    setBusy(true);
    try {
      const { data } = await api('POST', `${path(keyRecord.id)}/revoke`, { body: reason.trim() ? { reason } : {} });
      onRevoked(data);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Dialog title={`Revoke ${keyRecord.name}`} labelId="revoke-title" onDismiss={onCancel}>
      <form onSubmit={revoke} noValidate>
        <p>A revoked key stops working everywhere within seconds, and cannot be restored.</p>
        <FormError error={error} />
        <Field id="revoke-reason" label="Reason (kept in the record)" error={error?.fields?.reason}
          control={(p) => <input {...p} type="text" maxLength={512} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />} />
        <Field id="revoke-confirm" label={`Type the name of key ${keyRecord.id}, ${keyRecord.name}, to confirm`}
          control={(p) => <input {...p} type="text" autocomplete="off" value={typed} onInput={(e) => setTyped(e.currentTarget.value)} />} />
        <div class="actions">
          <button type="submit" class="danger primary" disabled={busy || typed !== keyRecord.name}>Revoke key</button>
          <button type="button" onClick={onCancel}>Cancel</button>
        </div>
      </form>
    </Dialog>
  );
}

const GRACE = [['0', 'None: the old key stops now'], ['1h', '1 hour'], ['12h', '12 hours'], ['1d', '1 day'], ['5d', '5 days']];

function RotateDialog({ keyRecord, etag, onCancel, onRotated }) {
  const [grace, setGrace] = useState('1d');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const rotate = async (e) => {
    e.preventDefault();
    setBusy(true);
    try {
      const { data } = await api('POST', `${path(keyRecord.id)}/rotate`, {
        body: { grace }, ifMatch: etag, idempotencyKey: newIdempotencyKey(),
      });
      onRotated(data);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Dialog title={`Rotate ${keyRecord.name}`} labelId="rotate-title" onDismiss={onCancel}>
      <form onSubmit={rotate} noValidate>
        <p>A new key with the same grants replaces this one. The old key keeps working for the grace period.</p>
        <FormError error={error} />
        <Field id="rotate-grace" label="Grace period" error={error?.fields?.grace}
          control={(p) => (
            <select {...p} value={grace} onChange={(e) => setGrace(e.currentTarget.value)}>
              {GRACE.map(([v, l]) => <option value={v}>{l}</option>)}
            </select>
          )} />
        <div class="actions">
          <button type="submit" class="primary" disabled={busy}>Rotate key</button>
          <button type="button" onClick={onCancel}>Cancel</button>
        </div>
      </form>
    </Dialog>
  );
}

function DeleteDialog({ keyRecord, etag, onCancel, onDeleted }) {
  const [error, setError] = useState(null);
  const del = async () => {
    try {
      await api('DELETE', path(keyRecord.id), { ifMatch: etag });
      onDeleted();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <Dialog title={`Delete ${keyRecord.name}`} labelId="delete-title" onDismiss={onCancel}>
      <p>The key and its record are removed; it stops working everywhere. The audit log keeps its history.</p>
      <FormError error={error} />
      <div class="actions">
        <button type="button" class="danger primary" onClick={del}>Delete key</button>
        <button type="button" onClick={onCancel}>Cancel</button>
      </div>
    </Dialog>
  );
}

function EditForm({ keyRecord, etag, onSaved, onReload }) {
  const [f, setF] = useState(() => formOf(keyRecord));
  const [errors, setErrors] = useState({});
  const [failure, setFailure] = useState(null);
  const [conflict, setConflict] = useState(null);
  const [busy, setBusy] = useState(false);
  // After an answer, keyboard and screen-reader users land on what it says.
  useEffect(() => {
    const target = conflict ? document.getElementById('edit-conflict') : document.querySelector('form [aria-invalid="true"]');
    target?.focus();
  }, [conflict, errors]);
  const save = async (e) => {
    e.preventDefault();
    const local = clientErrors(f);
    setErrors(local);
    if (Object.keys(local).length) return;
    setBusy(true);
    setFailure(null);
    setConflict(null);
    try {
      const res = await api('PATCH', path(keyRecord.id), { body: bodyOf(f, keyRecord), ifMatch: etag });
      onSaved(res.data, res.etag);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      if (err.status === 412) setConflict(err);
      else if (Object.keys(err.fields).length) setErrors(err.fields);
      else setFailure(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <form onSubmit={save} noValidate aria-labelledby="edit-title">
      <h2 id="edit-title">Edit</h2>
      {conflict && <Conflict error={conflict} id="edit-conflict" onReload={onReload} />}
      <FormError error={failure} />
      <DetailsSection f={f} onChange={setF} errors={errors} idPrefix="edit" />
      <ScopesSection f={f} onChange={setF} errors={errors} idPrefix="edit" />
      <LimitsSection f={f} onChange={setF} errors={errors} idPrefix="edit" current={keyRecord} />
      <div class="actions">
        <button type="submit" class="primary" disabled={busy}>Save changes</button>
      </div>
    </form>
  );
}

/** The 412 answer of a write guarded by `If-Match`: nothing was changed; reload and redo. */
function Conflict({ error, id, onReload }) {
  return (
    <div class="banner bad" role="alert" id={id} tabIndex={-1}>
      <strong>Changed elsewhere (412).</strong> This key was changed by someone else since you opened it
      {error.problem.current_version ? ` (it is now at version ${error.problem.current_version})` : ''}.
      Your change was not made, and theirs was not overwritten. Reload the key, then make your change again.
      <div class="actions"><button type="button" onClick={onReload}>Reload the key</button></div>
    </div>
  );
}

/**
 * Top up or set a metered key's balance: `POST /admin/keys/{id}/credits` with `If-Match` (the
 * version the page read; each change of the balance is a new version) and an Idempotency-Key
 * that is kept while the same change is retried after a lost answer.
 */
function TopUp({ keyRecord, etag, onChanged, onReload }) {
  const [mode, setMode] = useState('add');
  const [amount, setAmount] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const idem = useRef({ change: '', key: '' });
  useEffect(() => {
    if (error?.status === 412) document.getElementById('credits-conflict')?.focus();
    else if (error && Object.keys(error.fields).length) document.getElementById('credits-amount')?.focus();
  }, [error]);
  const valid = /^\d+$/.test(amount.trim());
  const submit = async (e) => {
    e.preventDefault();
    if (!valid) return;
    const n = Number(amount.trim());
    const change = `${mode} ${n} ${etag}`;
    if (idem.current.change !== change) idem.current = { change, key: newIdempotencyKey() };
    setBusy(true);
    setError(null);
    try {
      const res = await api('POST', `${path(keyRecord.id)}/credits`, {
        body: { [mode]: n }, ifMatch: etag, idempotencyKey: idem.current.key,
      });
      setAmount('');
      onChanged(res.data, res.etag,
        mode === 'add' ? `Added ${count(n)} credits: ${credits(res.data)} left.` : `The balance is set to ${count(n)}.`);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const fieldError = error && error.status !== 412 ? (error.fields[mode] || error.fields[''] || null) : null;
  return (
    <form class="topup" onSubmit={submit} noValidate aria-labelledby="topup-title">
      <h3 id="topup-title">Top up</h3>
      {error?.status === 412 && <Conflict error={error} id="credits-conflict" onReload={onReload} />}
      {error && error.status !== 412 && !fieldError && <FormError error={error} />}
      <div class="row">
        <Field id="credits-mode" label="Change"
          control={(p) => (
            <select {...p} value={mode} onChange={(e) => setMode(e.currentTarget.value)}>
              <option value="add">Add to the balance</option>
              <option value="set">Set the balance to</option>
            </select>
          )} />
        <Field id="credits-amount" label="Credits" error={fieldError}
          control={(p) => <input {...p} type="number" min={0} step={1} inputMode="numeric" value={amount}
            onInput={(e) => setAmount(e.currentTarget.value)} />} />
        <div class="field">
          <button type="submit" class="primary" disabled={busy || !valid}>{mode === 'add' ? 'Add credits' : 'Set balance'}</button>
        </div>
      </div>
    </form>
  );
}

/**
 * The key's requests per UTC day (the server's default range: the last 30 days up to today),
 * as SVG bars (allowed, and refused stacked on top) that are one image to a screen reader, with
 * their totals as its name, and the same numbers as a table of the days with requests.
 * `refresh` changes to fetch it again.
 */
export function Usage({ id, refresh }) {
  const [usage, setUsage] = useState(undefined);
  useEffect(() => {
    let live = true;
    api('GET', `${path(id)}/usage`)
      .then(({ data }) => live && setUsage(data))
      .catch((e) => live && setUsage(e.status === 404 && e.code !== 'key_not_found' ? null : e));
    return () => {
      live = false;
    };
  }, [id, refresh]);
  if (usage === undefined) return <p role="status">Loading usage…</p>;
  if (usage === null) return <p class="hint">This gateway does not record usage per day yet.</p>;
  if (usage instanceof ApiError) return <FormError error={usage} />;
  const days = usage.days || [];
  const busy = days.filter((d) => (d.allowed || 0) + (d.denied || 0) > 0);
  const max = Math.max(1, ...days.map((d) => (d.allowed || 0) + (d.denied || 0)));
  const W = 600, H = 140, T = 18, bw = days.length ? W / days.length : W; // T: room for the scale above
  const summary = `Requests per day from ${usage.from} to ${usage.to} (UTC): ${count(usage.allowed ?? 0)} allowed, ${count(usage.denied ?? 0)} denied.`;
  return (
    <figure class="usage" id="usage" data-allowed={usage.allowed ?? 0} data-denied={usage.denied ?? 0}>
      <svg class="chart" viewBox={`0 0 ${W} ${T + H + 18}`} role="img" aria-label={summary}>
        {days.map((d, i) => {
          const a = ((d.allowed || 0) / max) * H, x = ((d.denied || 0) / max) * H;
          return (
            <g>
              <title>{`${d.date}: ${d.allowed || 0} allowed, ${d.denied || 0} denied`}</title>
              <rect class="allowed" x={i * bw + 1} y={T + H - a} width={Math.max(1, bw - 2)} height={a} />
              <rect class="denied" x={i * bw + 1} y={T + H - a - x} width={Math.max(1, bw - 2)} height={x} />
            </g>
          );
        })}
        <line class="axis" x1="0" y1={T + H} x2={W} y2={T + H} />
        <line class="grid" x1="0" y1={T} x2={W} y2={T} />
        <text x="0" y={T - 5}>{`${max} a day`}</text>
        {days.length ? <text x="0" y={T + H + 15}>{days[0].date}</text> : null}
        {days.length ? <text x={W} y={T + H + 15} text-anchor="end">{days[days.length - 1].date}</text> : null}
      </svg>
      <figcaption>
        <span class="legend" aria-hidden="true"><span><span class="swatch allowed" />allowed</span><span><span class="swatch denied" />denied</span></span>
        <span id="usage-summary">{summary}</span> Counts reach the gateway's registry in batches, so the latest requests may take a moment to appear.
      </figcaption>
      {busy.length ? (
        <table class="usage-days" id="usage-table">
          <caption>Days with requests</caption>
          <thead><tr><th scope="col">Day (UTC)</th><th scope="col">Allowed</th><th scope="col">Denied</th><th scope="col">Denied, by code</th></tr></thead>
          <tbody>
            {busy.map((d) => (
              <tr key={d.date}>
                <th scope="row"><time datetime={d.date}>{d.date}</time></th>
                <td>{count(d.allowed || 0)}</td>
                <td>{count(d.denied || 0)}</td>
                <td>{Object.entries(d.codes || {}).map(([c, n]) => <><code>{c}</code> {count(n)} </>)}{Object.keys(d.codes || {}).length ? null : DASH}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : <p class="hint">No requests in this range.</p>}
    </figure>
  );
}

export function KeyDetail({ id, go }) {
  const [state, setState] = useState(null); // {key, etag}
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const [dialog, setDialog] = useState(null); // 'revoke' | 'rotate' | 'delete'
  const [rotated, setRotated] = useState(null);
  const [generation, setGeneration] = useState(0); // bumps to re-read the key

  useEffect(() => {
    let live = true;
    api('GET', path(id))
      .then(({ data, etag }) => {
        if (!live) return;
        setState({ key: data, etag });
        setError(null);
      })
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [id, generation]);

  if (error && !state) return <><h1>Key {id}</h1><FormError error={error} /><a href="#/keys">Back to the keys</a></>;
  if (!state) return <p role="status">Loading the key…</p>;
  const { key, etag } = state;
  const revoked = key.status === 'revoked';
  const toggle = async () => {
    try {
      const res = await api('PATCH', path(id), { body: { enabled: !key.enabled }, ifMatch: etag });
      setState({ key: res.data, etag: res.etag });
      setNotice(res.data.enabled ? 'The key is enabled.' : 'The key is disabled.');
    } catch (err) {
      setError(err);
    }
  };
  const reload = () => setGeneration(generation + 1);
  const metered = isMetered(key);
  return (
    <>
      <p><a href="#/keys">← All keys</a></p>
      <h1>{key.name} <Status status={key.status} /></h1>
      <p role="status" class="hint">{notice}</p>
      <FormError error={error} />
      <div class="actions">
        <button type="button" onClick={reload}>Refresh</button>
        {!revoked && <button type="button" onClick={toggle}>{key.enabled ? 'Disable' : 'Enable'}</button>}
        {!revoked && <button type="button" onClick={() => setDialog('rotate')}>Rotate…</button>}
        {!revoked && <button type="button" class="danger" onClick={() => setDialog('revoke')}>Revoke…</button>}
        <button type="button" class="danger" onClick={() => setDialog('delete')}>Delete…</button>
      </div>
      <dl class="props" id="key-props">
        <dt>Id</dt><dd><code>{key.id}</code></dd>
        <dt>Tag</dt><dd><code>{text(key.tag)}</code></dd>
        <dt>Description</dt><dd>{text(key.description)}</dd>
        <dt>Group</dt><dd>{text(key.group)}</dd>
        <dt>Environment</dt><dd>{key.environment}</dd>
        <dt>Scopes</dt><dd><code>{key.scopes.join(' ') || DASH}</code></dd>
        <dt>IP allowlist</dt><dd>{key.ip_allowlist.length ? <code>{key.ip_allowlist.join(', ')}</code> : 'any address'}</dd>
        <dt>Tenants</dt><dd>{key.tenants.length ? key.tenants.join(', ') : 'every tenant'}</dd>
        <dt>Rate tier</dt><dd id="key-rate-tier">{tier(key)}</dd>
        <dt>Credits remaining</dt><dd id="key-credits">{credits(key)}</dd>
        {metered && <><dt>Credits leased</dt><dd id="key-credits-leased">{count(key.credits_leased)}</dd></>}
        <dt>Refill</dt><dd>{metered === false ? 'none (unmetered)' : key.refill ? refill(key) : key.refill === null ? 'none' : DASH}</dd>
        {metered && key.refill && <><dt>Next refill</dt><dd id="key-next-refill">{when(key.next_refill_at)}</dd></>}
        <dt>Created</dt><dd>{when(key.created_at)}</dd>
        <dt>Updated</dt><dd>{when(key.updated_at)}</dd>
        <dt>Expires</dt><dd>{key.expires_at ? when(key.expires_at) : 'never'}</dd>
        <dt>Last used</dt><dd id="key-last-used">{lastUsed(key)}</dd>
        {key.revoked_at && <><dt>Revoked</dt><dd>{when(key.revoked_at)}{key.revoke_reason ? `: ${key.revoke_reason}` : ''}</dd></>}
        {key.rotated_from && <><dt>Rotated from</dt><dd><a href={`#/keys/${key.rotated_from}`}><code>{key.rotated_from}</code></a></dd></>}
        {key.rotated_to && <><dt>Rotated to</dt><dd><a href={`#/keys/${key.rotated_to}`}><code>{key.rotated_to}</code></a></dd></>}
        <dt>Metadata</dt><dd><code>{Object.keys(key.metadata || {}).length ? JSON.stringify(key.metadata) : DASH}</code></dd>
        <dt>Version</dt><dd id="key-version">{key.version}</dd>
      </dl>
      {metered && !revoked && (
        <section aria-labelledby="credits-title">
          <h2 id="credits-title">Credits</h2>
          <p class="hint">
            {credits(key)} left{typeof key.credits_leased === 'number' && key.credits_leased ? `, ${count(key.credits_leased)} leased to the gateway's isolates (what they do not spend comes back within seconds)` : ''}.
            {' '}Each request spends its route's cost; with too few left it is refused (429).
          </p>
          <TopUp keyRecord={key} etag={etag} onReload={reload}
            onChanged={(k, t, msg) => { setState({ key: k, etag: t }); setNotice(msg); }} />
        </section>
      )}
      <h2>Usage, last 30 days</h2>
      <Usage id={id} refresh={generation} />
      {!revoked && (
        <EditForm key={`${key.id}-${key.version}`} keyRecord={key} etag={etag}
          onSaved={(k, t) => { setState({ key: k, etag: t }); setNotice('Saved.'); }}
          onReload={reload} />
      )}
      {dialog === 'revoke' && (
        <RevokeDialog keyRecord={key} onCancel={() => setDialog(null)}
          onRevoked={() => { setDialog(null); setNotice('The key is revoked.'); reload(); }} />
      )}
      {dialog === 'rotate' && (
        <RotateDialog keyRecord={key} etag={etag} onCancel={() => setDialog(null)}
          onRotated={(c) => { setDialog(null); setRotated(c); }} />
      )}
      {dialog === 'delete' && (
        <DeleteDialog keyRecord={key} etag={etag} onCancel={() => setDialog(null)} onDeleted={() => go('#/keys')} />
      )}
      {rotated && (
        <ShowOnce title="Key rotated: the new key" created={rotated}
          onDone={() => { const next = rotated.record.id; setRotated(null); go(`#/keys/${next}`); }} />
      )}
    </>
  );
}
