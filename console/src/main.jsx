// The keygate admin console: sign-in, then the keys and the audit log. Routes live in the URL
// fragment (`#/keys/<id>`, never a secret); the credential lives in sessionStorage.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, api, session, whenUnauthorized } from './api.js';
import { AuditLog } from './audit.jsx';
import { KeyDetail, KeyList } from './keys.jsx';
import { Field, FormError } from './ui.jsx';

function SignIn({ onSignedIn, reason }) {
  const [credential, setCredential] = useState('');
  const [error, setError] = useState(reason || null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    try {
      // Any admin read proves the credential; it is kept only once it worked.
      await api('GET', '/admin/keys', { query: { limit: 1 }, credential: credential.trim() });
      session.set(credential.trim());
      onSignedIn();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="login">
      <h1>keygate admin console</h1>
      <p>Enter the admin token, or an admin key. It is kept in this browser tab only (session storage) and sent only to this gateway's admin API.</p>
      <FormError error={error} />
      <form onSubmit={submit} noValidate>
        <Field id="credential" label="Admin token or admin key"
          control={(p) => <input {...p} type="password" autocomplete="off" spellcheck={false} required
            value={credential} onInput={(e) => setCredential(e.currentTarget.value)} />} />
        <button type="submit" class="primary" disabled={busy || !credential.trim()}>Sign in</button>
      </form>
    </main>
  );
}

const route = () => (location.hash || '#/keys').slice(1);

function App() {
  const [signedIn, setSignedIn] = useState(() => !!session.get());
  const [reason, setReason] = useState(null);
  const [where, setWhere] = useState(route);
  useEffect(() => {
    const onHash = () => setWhere(route());
    addEventListener('hashchange', onHash);
    whenUnauthorized((err) => {
      session.clear();
      setReason(new ApiError(err.status, { ...err.problem, title: 'Signed out', detail: `The gateway refused the credential: ${err.message}` }));
      setSignedIn(false);
    });
    return () => removeEventListener('hashchange', onHash);
  }, []);
  if (!signedIn) return <SignIn reason={reason} onSignedIn={() => { setReason(null); setSignedIn(true); }} />;
  const go = (hash) => {
    if (location.hash === hash) setWhere(route());
    else location.hash = hash;
  };
  const keyMatch = /^\/keys\/([0-9a-f]{16})$/.exec(where);
  const section = where.startsWith('/audit') ? 'audit' : 'keys';
  return (
    <>
      <a class="visually-hidden" href="#main">Skip to content</a>
      <header class="top">
        <span class="brand">keygate</span>
        <nav aria-label="Console">
          <a href="#/keys" aria-current={section === 'keys' ? 'page' : undefined}>API keys</a>
          <a href="#/audit" aria-current={section === 'audit' ? 'page' : undefined}>Audit log</a>
        </nav>
        <span class="spacer" />
        <button type="button" onClick={() => { session.clear(); setSignedIn(false); }}>Sign out</button>
      </header>
      <main id="main">
        {section === 'audit' ? <AuditLog /> : keyMatch ? <KeyDetail id={keyMatch[1]} go={go} key={keyMatch[1]} /> : <KeyList go={go} />}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app'));
