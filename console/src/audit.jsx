// The audit log: newest first, filtered by key, a page at a time.
import { useState } from 'preact/hooks';
import { DASH, Field, FormError, Pager, text, usePages, when } from './ui.jsx';

export function AuditLog() {
  const [keyId, setKeyId] = useState('');
  const [draft, setDraft] = useState('');
  const pages = usePages('/admin/audit', { limit: 25, key_id: keyId });
  const { page, error } = pages;
  return (
    <>
      <h1>Audit log</h1>
      <form class="filters" role="search" aria-label="Filter the audit log"
        onSubmit={(e) => { e.preventDefault(); setKeyId(draft.trim()); }}>
        <Field id="audit-key" label="Key id" error={error?.problem?.parameter === 'key_id' ? error.message : undefined}
          control={(p) => <input {...p} type="text" value={draft} onInput={(e) => setDraft(e.currentTarget.value)} />} />
        <button type="submit">Apply</button>
      </form>
      {error?.problem?.parameter !== 'key_id' && <FormError error={error} />}
      {page && (
        <>
          <table class="cards" id="audit-table">
            <caption>{page.events.length ? `Page ${pages.number}, newest first` : 'No events.'}</caption>
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
          <Pager pages={pages} />
        </>
      )}
    </>
  );
}
