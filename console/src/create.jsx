// The "Create key" wizard (details, scopes, limits) and the dialog that shows a new key once.
import { useRef, useState } from 'preact/hooks';
import { ApiError, api, newIdempotencyKey } from './api.js';
import { DetailsSection, LimitsSection, ScopesSection, bodyOf, clientErrors, emptyForm } from './keyform.jsx';
import { Dialog, FormError } from './ui.jsx';

const STEPS = ['Details', 'Scopes', 'Limits'];
const STEP_OF = { name: 0, description: 0, group: 0, environment: 0, expiry: 0, scopes: 1 };

export function CreateWizard({ onCreated, onCancel, group }) {
  const [f, setF] = useState({ ...emptyForm(), group: group || '' });
  const [step, setStep] = useState(0);
  const [errors, setErrors] = useState({});
  const [failure, setFailure] = useState(null);
  const [busy, setBusy] = useState(false);
  // One Idempotency-Key per wizard: a retry after a lost answer does not issue a second key.
  const idem = useRef(newIdempotencyKey());

  const submit = async (e) => {
    e.preventDefault();
    if (step < STEPS.length - 1) {
      setStep(step + 1);
      return;
    }
    const local = clientErrors(f);
    if (Object.keys(local).length) {
      setErrors(local);
      return;
    }
    setBusy(true);
    setFailure(null);
    try {
      const { data } = await api('POST', '/admin/keys', { body: bodyOf(f), idempotencyKey: idem.current });
      onCreated(data);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      const fields = err.fields;
      setErrors(fields);
      const names = Object.keys(fields);
      if (names.length) {
        setStep(Math.min(...names.map((n) => STEP_OF[n] ?? 2)));
      } else {
        setFailure(err);
      }
      // A refused body was not stored: the corrected one is a new request.
      idem.current = newIdempotencyKey();
    } finally {
      setBusy(false);
    }
  };

  const Section = [DetailsSection, ScopesSection, LimitsSection][step];
  return (
    <Dialog title="Create key" labelId="create-title" onDismiss={onCancel}>
      <ol class="steps" aria-label="Steps">
        {STEPS.map((s, i) => <li aria-current={i === step ? 'step' : undefined}>{i + 1}. {s}</li>)}
      </ol>
      <form onSubmit={submit} noValidate>
        <FormError error={failure} />
        <Section f={f} onChange={setF} errors={errors} idPrefix="create" creating />
        <div class="actions">
          {step > 0 && <button type="button" onClick={() => setStep(step - 1)}>Back</button>}
          <button type="submit" class="primary" disabled={busy || (step === 0 && !f.name.trim())}>
            {step < STEPS.length - 1 ? 'Next' : busy ? 'Creating…' : 'Create key'}
          </button>
          <button type="button" onClick={onCancel}>Cancel</button>
        </div>
      </form>
    </Dialog>
  );
}

/**
 * The plaintext key, shown once. The dialog cannot be closed (not even with Escape) before the
 * operator confirms they stored it.
 */
export function ShowOnce({ title, created, onDone }) {
  const [stored, setStored] = useState(false);
  const [copied, setCopied] = useState('');
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(created.key);
      setCopied('Copied to the clipboard.');
    } catch {
      setCopied('The browser refused the clipboard: select the key and copy it by hand.');
    }
  };
  return (
    <Dialog title={title} labelId="show-once-title" locked>
      <p>
        This is the only time the key <strong>{created.record.name}</strong> (<code>{created.record.id}</code>) is
        shown. The gateway keeps only its hash.
      </p>
      <div class="secret">
        <label class="visually-hidden" for="new-key">The new key</label>
        <input id="new-key" type="text" readOnly value={created.key} onFocus={(e) => e.currentTarget.select()} />
        <button type="button" class="primary" onClick={copy}>Copy key</button>
      </div>
      <p role="status" class="hint">{copied}</p>
      <label class="inline">
        <input type="checkbox" id="stored-confirm" checked={stored} onChange={(e) => setStored(e.currentTarget.checked)} />
        I have stored the key in a safe place
      </label>
      <div class="actions">
        <button type="button" class="primary" disabled={!stored} onClick={onDone}>Done</button>
      </div>
    </Dialog>
  );
}
