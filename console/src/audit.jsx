// The audit log: newest first, filtered by key, a page at a time.
import { useEffect, useState } from 'preact/hooks';
import { api } from './api.js';
import { DASH, Field, FormError, text, when } from './ui.jsx';

export function AuditLog() {
  const [keyId, setKeyId] = useState('');
  const [draft, setDraft] = useState('');
  const [cursors, setCursors] = useState(['']);
  const [page, setPage] = useState(null);
  const [error, setError] = useState(null);
  const cursor = cursors[cursors.length - 1];
  useEffect(() => {
    let live = true;
    setError(null);
    api('GET', '/admin/audit', { query: { limit: 25, cursor, key_id: keyId } })
      .then(({ data }) => live && setPage(data))
      .catch((e) => live && setError(e));
    return () => {
      live = false;
    };
  }, [cursor, keyId]);
  return (
    <>
      <h1>Audit log</h1>
      <form class="filters" role="search" aria-label="Filter the audit log"
        onSubmit={(e) => { e.preventDefault(); setKeyId(draft.trim()); setCursors(['']); }}>
        <Field id="audit-key" label="Key id" error={error?.problem?.parameter === 'key_id' ? error.message : undefined}
          control={(p) => <input {...p} type="text" value={draft} onInput={(e) => setDraft(e.currentTarget.value)} />} />
        <button type="submit">Apply</button>
      </form>
      {error?.problem?.parameter !== 'key_id' && <FormError error={error} />}
      {page && (
        <>
          <table class="cards" id="audit-table">
            <caption>{page.events.length ? `Page ${cursors.length}, newest first` : 'No events.'}</caption>
            <thead>
              <tr>{['When', 'Action', 'Key', 'Actor', 'Client IP', 'Changed', 'Code'].map((h) => <th scope="col">{h}</th>)}</tr>
            </thead>
            <tbody>
              {page.events.map((ev) => (
                <tr key={ev.id}>
                  <td data-label="When">{when(ev.at)}</td>
                  <td data-label="Action"><code>{ev.action}</code></td>
                  <td data-label="Key">{ev.key_id ? <a href={`#/keys/${ev.key_id}`}><code>{ev.key_id}</code></a> : DASH}</td>
                  <td data-label="Actor"><code>{ev.actor}</code></td>
                  <td data-label="Client IP">{text(ev.client_ip)}</td>
                  <td data-label="Changed">{ev.changed?.length ? ev.changed.join(', ') : DASH}</td>
                  <td data-label="Code">{text(ev.code)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <nav class="pager" aria-label="Pages">
            <button type="button" disabled={cursors.length < 2} onClick={() => setCursors(cursors.slice(0, -1))}>Previous page</button>
            <span>Page {cursors.length}</span>
            <button type="button" disabled={!page.cursor} onClick={() => setCursors([...cursors, page.cursor])}>Next page</button>
          </nav>
        </>
      )}
    </>
  );
}
