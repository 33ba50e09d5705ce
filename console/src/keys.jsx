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
        <Field id="revoke-confirm" label={`Type the key's name, ${keyRecord.name}, to confirm`}
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
      {conflict && (
        <div class="banner bad" role="alert" id="edit-conflict" tabIndex={-1}>
          <strong>Changed elsewhere (412).</strong> This key was changed by someone else since you opened it
          {conflict.problem.current_version ? ` (it is now at version ${conflict.problem.current_version})` : ''}.
          Your changes were not saved, and theirs were not overwritten. Reload the key, then make your change again.
          <div class="actions"><button type="button" onClick={onReload}>Reload the key</button></div>
        </div>
      )}
      <FormError error={failure} />
      <DetailsSection f={f} onChange={setF} errors={errors} idPrefix="edit" />
      <ScopesSection f={f} onChange={setF} errors={errors} idPrefix="edit" />
      <LimitsSection f={f} onChange={setF} errors={errors} idPrefix="edit" />
      <div class="actions">
        <button type="submit" class="primary" disabled={busy}>Save changes</button>
      </div>
    </form>
  );
}

export function Usage({ id }) {
  const [usage, setUsage] = useState(undefined);
  useEffect(() => {
    const to = new Date();
    const from = new Date(to.getTime() - 29 * 86400000);
    const day = (d) => d.toISOString().slice(0, 10);
    api('GET', `${path(id)}/usage`, { query: { from: day(from), to: day(to) } })
      .then(({ data }) => setUsage(data))
      .catch((e) => setUsage(e.status === 404 ? null : e));
  }, [id]);
  if (usage === undefined) return <p role="status">Loading usage…</p>;
  if (usage === null) return <p class="hint">This gateway does not record usage per day yet.</p>;
  if (usage instanceof ApiError) return <FormError error={usage} />;
  const days = usage.days || [];
  const max = Math.max(1, ...days.map((d) => (d.allowed || 0) + (d.denied || 0)));
  const total = (k) => days.reduce((n, d) => n + (d[k] || 0), 0);
  const W = 600, H = 140, bw = days.length ? W / days.length : W;
  const summary = `Requests per day from ${usage.from} to ${usage.to}: ${total('allowed')} allowed, ${total('denied')} denied.`;
  return (
    <figure>
      <svg class="chart" viewBox={`0 0 ${W} ${H + 16}`} role="img" aria-label={summary}>
        {days.map((d, i) => {
          const a = ((d.allowed || 0) / max) * H, x = ((d.denied || 0) / max) * H;
          return (
            <g>
              <title>{`${d.date}: ${d.allowed || 0} allowed, ${d.denied || 0} denied`}</title>
              <rect class="allowed" x={i * bw + 1} y={H - a} width={Math.max(1, bw - 2)} height={a} />
              <rect class="denied" x={i * bw + 1} y={H - a - x} width={Math.max(1, bw - 2)} height={x} />
            </g>
          );
        })}
        <line class="axis" x1="0" y1={H} x2={W} y2={H} />
        {days.length ? <text x="0" y={H + 12}>{days[0].date}</text> : null}
        {days.length ? <text x={W} y={H + 12} text-anchor="end">{days[days.length - 1].date}</text> : null}
      </svg>
      <figcaption>
        <span class="legend"><span><span class="swatch allowed" />allowed</span><span><span class="swatch denied" />denied</span></span>
        {summary}
      </figcaption>
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
    setError(null);
    api('GET', path(id))
      .then(({ data, etag }) => live && setState({ key: data, etag }))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [id, generation]);

  if (error) return <><h1>Key {id}</h1><FormError error={error} /><a href="#/keys">Back to the keys</a></>;
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
  return (
    <>
      <p><a href="#/keys">← All keys</a></p>
      <h1>{key.name} <Status status={key.status} /></h1>
      <p role="status" class="hint">{notice}</p>
      <div class="actions">
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
        <dt>Rate tier</dt><dd>{text(key.rate_tier)}</dd>
        <dt>Credits</dt><dd>{credits(key)}</dd>
        <dt>Refill</dt><dd>{refill(key)}</dd>
        <dt>Created</dt><dd>{when(key.created_at)}</dd>
        <dt>Updated</dt><dd>{when(key.updated_at)}</dd>
        <dt>Expires</dt><dd>{key.expires_at ? when(key.expires_at) : 'never'}</dd>
        <dt>Last used</dt><dd>{when(key.last_used_at)}</dd>
        {key.revoked_at && <><dt>Revoked</dt><dd>{when(key.revoked_at)}{key.revoke_reason ? `: ${key.revoke_reason}` : ''}</dd></>}
        {key.rotated_from && <><dt>Rotated from</dt><dd><a href={`#/keys/${key.rotated_from}`}><code>{key.rotated_from}</code></a></dd></>}
        {key.rotated_to && <><dt>Rotated to</dt><dd><a href={`#/keys/${key.rotated_to}`}><code>{key.rotated_to}</code></a></dd></>}
        <dt>Metadata</dt><dd><code>{Object.keys(key.metadata || {}).length ? JSON.stringify(key.metadata) : DASH}</code></dd>
        <dt>Version</dt><dd>{key.version}</dd>
      </dl>
      <h2>Usage, last 30 days</h2>
      <Usage id={id} />
      {!revoked && (
        <EditForm key={`${key.id}-${key.version}`} keyRecord={key} etag={etag}
          onSaved={(k, t) => { setState({ key: k, etag: t }); setNotice('Saved.'); }}
          onReload={() => setGeneration(generation + 1)} />
      )}
      {dialog === 'revoke' && (
        <RevokeDialog keyRecord={key} onCancel={() => setDialog(null)}
          onRevoked={() => { setDialog(null); setNotice('The key is revoked.'); setGeneration(generation + 1); }} />
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
