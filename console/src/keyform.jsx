// The fields of a key, shared by the create wizard and the edit form: the form's state, its
// sections, and the request body built from it.
import { useEffect, useState } from 'preact/hooks';
import { policyScopes, policyTiers } from './api.js';
import { Field, credits as creditsText, listOf } from './ui.jsx';

export const EXPIRY_PRESETS = [
  ['1h', '1 hour'],
  ['12h', '12 hours'],
  ['1d', '1 day'],
  ['5d', '5 days'],
  ['1y', '1 year'],
];

export function emptyForm() {
  return {
    name: '', description: '', group: '', environment: 'live', expiry: '1y', expiresAt: '',
    scopes: [], otherScopes: '', ip_allowlist: '', tenants: '', rate_tier: '', credits: '', unmeter: false,
    refillAmount: '', refillInterval: '', refillDay: '', metadata: '',
  };
}

/**
 * The form for an existing key (edit): expiry unchanged unless chosen. Its credits field sets
 * the balance (`PATCH {"credits": n}`): it starts empty (the balance unchanged), since the
 * balance moves with every request while the form is open.
 */
export function formOf(key) {
  return {
    name: key.name || '', description: key.description || '', group: key.group || '',
    environment: key.environment, expiry: 'keep', expiresAt: '', scopes: [...(key.scopes || [])], otherScopes: '',
    ip_allowlist: (key.ip_allowlist || []).join('\n'), tenants: (key.tenants || []).join('\n'),
    rate_tier: key.rate_tier || '', credits: '', unmeter: false,
    refillAmount: key.refill?.amount ?? '', refillInterval: key.refill?.interval || '', refillDay: key.refill?.day ?? '',
    metadata: key.metadata && Object.keys(key.metadata).length ? JSON.stringify(key.metadata, null, 2) : '',
  };
}

const scopesOf = (f) => [...new Set([...f.scopes, ...listOf(f.otherScopes.replace(/\s+/g, ','))])];

function expiryOf(f) {
  if (f.expiry === 'keep') return {};
  if (f.expiry === 'never') return { expires_in: null, expires_at: null };
  if (f.expiry === 'custom') {
    const d = new Date(f.expiresAt);
    return { expires_at: Number.isNaN(d.getTime()) ? f.expiresAt : d.toISOString() };
  }
  return { expires_in: f.expiry };
}

const filled = (v) => String(v ?? '').trim() !== '';
const whole = (v) => /^\d+$/.test(String(v).trim());

/** Whether the key is metered (spends credits); undefined when the gateway does not say. */
export const isMetered = (key) => (key && 'credits_remaining' in key ? key.credits_remaining !== null : undefined);

function refillOf(f) {
  if (!filled(f.refillAmount) || !f.refillInterval) return null;
  const r = { amount: Number(f.refillAmount), interval: f.refillInterval };
  if (f.refillInterval === 'month' && filled(f.refillDay)) r.day = Number(f.refillDay);
  return r;
}

/**
 * What the API could not be sent at all (metadata that is not JSON, a number that is not a
 * whole number, half a refill); everything else is the server's to judge.
 */
export function clientErrors(f) {
  const errors = {};
  if (filled(f.credits) && !whole(f.credits)) errors.credits = 'A whole number of credits, 0 or more.';
  if (filled(f.refillAmount) && !whole(f.refillAmount)) errors.refill = 'A whole number of credits, 1 or more.';
  else if (filled(f.refillAmount) !== !!f.refillInterval && !f.unmeter) {
    errors.refill = f.refillInterval ? 'How many credits each refill sets.' : 'Choose how often the credits are refilled.';
  } else if (f.refillInterval === 'month' && filled(f.refillDay) && !whole(f.refillDay)) {
    errors.refill = 'The day of the month, 1 to 31.';
  }
  if (f.metadata.trim()) {
    try {
      JSON.parse(f.metadata);
    } catch (e) {
      errors.metadata = `Not JSON: ${e.message}`;
    }
  }
  return errors;
}

/**
 * The body of `POST /admin/keys`, or with `original` the `PATCH` of what changed. Fields the
 * user left empty are not sent, so a gateway without the newer fields (rate tier, credits,
 * refill) accepts the rest.
 */
export function bodyOf(f, original) {
  const full = {
    name: f.name,
    description: f.description.trim() ? f.description : null,
    group: f.group.trim() ? f.group : null,
    scopes: scopesOf(f),
    ip_allowlist: listOf(f.ip_allowlist),
    tenants: listOf(f.tenants),
    metadata: f.metadata.trim() ? JSON.parse(f.metadata) : {},
    ...(f.rate_tier.trim() ? { rate_tier: f.rate_tier.trim() } : original?.rate_tier ? { rate_tier: null } : {}),
    ...(refillOf(f) ? { refill: refillOf(f) } : original?.refill ? { refill: null } : {}),
    ...expiryOf(f),
  };
  // Credits: a number is the balance (on create the first one; on edit it replaces the current
  // one); on edit, "stop metering" is `null` (and takes the refill with it).
  const credits = f.unmeter ? { credits: null } : filled(f.credits) ? { credits: Number(f.credits) } : {};
  if (f.unmeter) delete full.refill;
  if (!original) {
    const body = { ...full, ...credits, environment: f.environment };
    for (const k of ['description', 'group']) if (body[k] === null) delete body[k];
    for (const k of ['ip_allowlist', 'tenants']) if (!body[k].length) delete body[k];
    if (!Object.keys(body.metadata).length) delete body.metadata;
    return body;
  }
  const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
  const before = {
    name: original.name, description: original.description, group: original.group, scopes: original.scopes,
    ip_allowlist: original.ip_allowlist, tenants: original.tenants, metadata: original.metadata || {},
    rate_tier: original.rate_tier, refill: original.refill,
  };
  const patch = { ...credits };
  for (const [k, v] of Object.entries(full)) {
    if (k === 'expires_in' || k === 'expires_at' || !same(v, before[k])) patch[k] = v;
  }
  return patch;
}

const set = (f, onChange, k) => (e) => onChange({ ...f, [k]: e.currentTarget.type === 'checkbox' ? e.currentTarget.checked : e.currentTarget.value });

export function DetailsSection({ f, onChange, errors, idPrefix, creating }) {
  const id = (k) => `${idPrefix}-${k}`;
  return (
    <>
      <Field id={id('name')} label="Name" error={errors.name}
        control={(p) => <input {...p} type="text" required maxLength={128} value={f.name} onInput={set(f, onChange, 'name')} />} />
      <Field id={id('description')} label="Description" hint="What the key is for, for the next operator." error={errors.description}
        control={(p) => <input {...p} type="text" maxLength={1024} value={f.description} onInput={set(f, onChange, 'description')} />} />
      <Field id={id('group')} label="Group" hint="Groups organise keys; filter the list by them." error={errors.group}
        control={(p) => <input {...p} type="text" maxLength={128} value={f.group} onInput={set(f, onChange, 'group')} />} />
      {creating ? (
        <Field id={id('environment')} label="Environment" error={errors.environment}
          control={(p) => (
            <select {...p} value={f.environment} onChange={set(f, onChange, 'environment')}>
              <option value="live">live</option>
              <option value="test">test</option>
            </select>
          )} />
      ) : null}
      <Field id={id('expiry')} label="Expiration" error={errors.expiry}
        control={(p) => (
          <select {...p} value={f.expiry} onChange={set(f, onChange, 'expiry')}>
            {!creating && <option value="keep">Unchanged</option>}
            {EXPIRY_PRESETS.map(([v, label]) => <option value={v}>{creating ? label : `${label} from now`}</option>)}
            <option value="custom">Custom date</option>
            <option value="never">Never</option>
          </select>
        )} />
      {f.expiry === 'custom' && (
        <Field id={id('expires-at')} label="Expires at (your local time)" error={errors.expiry}
          control={(p) => <input {...p} type="datetime-local" required value={f.expiresAt} onInput={set(f, onChange, 'expiresAt')} />} />
      )}
    </>
  );
}

export function ScopesSection({ f, onChange, errors, idPrefix }) {
  const [known, setKnown] = useState(null);
  useEffect(() => {
    policyScopes().then(setKnown);
  }, []);
  const all = [...new Set([...(known || []), ...f.scopes])].sort();
  const toggle = (s) => (e) => {
    const on = e.currentTarget.checked;
    onChange({ ...f, scopes: on ? [...f.scopes, s] : f.scopes.filter((x) => x !== s) });
  };
  const errId = errors.scopes ? `${idPrefix}-scopes-error` : undefined;
  return (
    <>
      <fieldset aria-describedby={errId}>
        <legend>Scopes the route policy uses</legend>
        {known === null ? <p class="hint">Loading the policy's scopes…</p> : null}
        {known !== null && !all.length ? <p class="hint">The policy names no scopes; enter them below.</p> : null}
        <div class="checks">
          {all.map((s, i) => (
            <label key={s}>
              <input type="checkbox" id={`${idPrefix}-scope-${i}`} checked={f.scopes.includes(s)} onChange={toggle(s)} />
              <code>{s}</code>
            </label>
          ))}
        </div>
      </fieldset>
      <Field id={`${idPrefix}-other-scopes`} label="Other scopes"
        hint="Separated by spaces or commas. `*` matches one segment, a trailing `**` the rest."
        control={(p) => <input {...p} type="text" value={f.otherScopes} onInput={set(f, onChange, 'otherScopes')} />} />
      {errors.scopes && <p class="error" id={errId} data-field-error={`${idPrefix}-scopes`}>{errors.scopes}</p>}
    </>
  );
}

/**
 * The rate tier: a select of the tiers the policy declares (from the served OpenAPI document),
 * plus none. A tier the key has that the policy no longer declares stays selectable, so saving
 * another change does not drop it. Free text when the gateway does not describe its tiers.
 */
function RateTierField({ f, onChange, errors, id }) {
  const [known, setKnown] = useState(null);
  useEffect(() => {
    policyTiers().then(setKnown);
  }, []);
  const hint = 'The tier\'s rate limit applies to the key on every route, in place of the route\'s own. None: the route\'s.';
  if (known && !known.known) {
    return <Field id={id} label="Rate tier" hint={hint} error={errors.rate_tier}
      control={(p) => <input {...p} type="text" value={f.rate_tier} onInput={set(f, onChange, 'rate_tier')} />} />;
  }
  const tiers = known ? [...known.tiers] : [];
  if (f.rate_tier && !tiers.includes(f.rate_tier)) tiers.push(f.rate_tier);
  const note = known && !known.tiers.length ? ' This gateway\'s policy declares no tiers.' : '';
  return (
    <Field id={id} label="Rate tier" hint={hint + note} error={errors.rate_tier}
      control={(p) => (
        <select {...p} value={f.rate_tier} onChange={set(f, onChange, 'rate_tier')} aria-busy={known ? undefined : 'true'}>
          <option value="">none</option>
          {tiers.map((t) => <option value={t}>{t}</option>)}
        </select>
      )} />
  );
}

export function LimitsSection({ f, onChange, errors, idPrefix, creating, current }) {
  const id = (k) => `${idPrefix}-${k}`;
  const metered = isMetered(current);
  const creditsHint = creating
    ? 'The key\'s first balance: each request spends its route\'s cost. Empty: unmetered (no credit limit).'
    : metered
      ? `Now ${creditsText(current)} left. A number replaces the balance; empty leaves it. To add to it, use Top up above.`
      : 'The key is unmetered. A number meters it, with that balance; empty leaves it unmetered.';
  return (
    <>
      <Field id={id('ip_allowlist')} label="IP allowlist" hint="One address or CIDR per line (network form, e.g. 10.0.0.0/8). Empty: any address."
        error={errors.ip_allowlist}
        control={(p) => <textarea {...p} rows={3} value={f.ip_allowlist} onInput={set(f, onChange, 'ip_allowlist')} />} />
      <Field id={id('tenants')} label="Tenants" hint="One per line. Empty: every tenant." error={errors.tenants}
        control={(p) => <textarea {...p} rows={2} value={f.tenants} onInput={set(f, onChange, 'tenants')} />} />
      <RateTierField f={f} onChange={onChange} errors={errors} id={id('rate_tier')} />
      <Field id={id('credits')} label={creating ? 'Credits' : 'Set the credit balance'} hint={creditsHint} error={errors.credits}
        control={(p) => <input {...p} type="number" min={0} step={1} inputMode="numeric" disabled={f.unmeter}
          value={f.credits} onInput={set(f, onChange, 'credits')} />} />
      {!creating && metered && (
        <label class="inline check-row">
          <input type="checkbox" id={id('unmeter')} checked={f.unmeter} onChange={set(f, onChange, 'unmeter')} />
          Stop metering (no credit limit; the refill goes too)
        </label>
      )}
      <fieldset disabled={f.unmeter}>
        <legend>Refill</legend>
        <div class="row">
          <Field id={id('refill-amount')} label="Refill to (credits)" error={errors.refill}
            control={(p) => <input {...p} type="number" min={1} step={1} inputMode="numeric" value={f.refillAmount} onInput={set(f, onChange, 'refillAmount')} />} />
          <Field id={id('refill-interval')} label="Refill every"
            control={(p) => (
              <select {...p} value={f.refillInterval} onChange={set(f, onChange, 'refillInterval')}>
                <option value="">No refill</option>
                <option value="day">day (UTC midnight)</option>
                <option value="month">month</option>
              </select>
            )} />
          {f.refillInterval === 'month' && (
            <Field id={id('refill-day')} label="On day of the month"
              control={(p) => <input {...p} type="number" min={1} max={31} step={1} inputMode="numeric" placeholder="1"
                value={f.refillDay} onInput={set(f, onChange, 'refillDay')} />} />
          )}
        </div>
        <p class="hint">A refill resets the balance to this amount; it does not add up. A refill alone meters the key.</p>
      </fieldset>
      <Field id={id('metadata')} label="Metadata (JSON object)" hint={'At most 1 KiB, e.g. {"team": "billing"}.'} error={errors.metadata}
        control={(p) => <textarea {...p} rows={3} value={f.metadata} onInput={set(f, onChange, 'metadata')} />} />
    </>
  );
}
