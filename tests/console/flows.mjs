// The admin console in a real browser: Debian's headless Chromium, driven by playwright-core,
// against a `wrangler dev` worker that tests/console.rs started (with a real local echo origin).
// Two flows:
//   1. sign in (keyboard), create a key with the wizard (a rate tier from the policy's, credits
//      and a monthly refill), copy it, the show-once confirmation, use the key on a protected
//      route (the origin receives it); the detail then shows when it was last used and the
//      allowed request in the usage chart (refreshed until the usage flush lands); a top-up
//      refused with 412 after a concurrent change of the balance, then made; revoke it from the
//      list's actions menu (typed confirmation), the key then gets 401 revoked_key; the audit log.
//   2. a server-side validation error shown next to its field, then a concurrent change made
//      through the API while the edit form is open: saving answers 412 and the console says so.
// Every page is checked with axe-core (serious and critical violations fail), screenshotted into
// $KEYGATE_SCREENSHOTS, and again on a phone-sized viewport. The page may fetch nothing from
// another origin, and the CSP may block nothing. The last stdout line is a JSON summary that
// tests/console.rs checks against the worker and the origin.
//
// Env: KEYGATE_BASE, KEYGATE_ADMIN_TOKEN, KEYGATE_SCREENSHOTS, KEYGATE_CHROMIUM (default /usr/bin/chromium).
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const BASE = process.env.KEYGATE_BASE;
const TOKEN = process.env.KEYGATE_ADMIN_TOKEN;
const OUT = process.env.KEYGATE_SCREENSHOTS;
const CHROMIUM = process.env.KEYGATE_CHROMIUM || '/usr/bin/chromium';
if (!BASE || !TOKEN || !OUT) throw new Error('set KEYGATE_BASE, KEYGATE_ADMIN_TOKEN and KEYGATE_SCREENSHOTS');
fs.mkdirSync(OUT, { recursive: true });

const rand = Math.random().toString(16).slice(2, 10);
const failures = [];
const screenshots = [];
const step = (m) => console.error(`console-test: ${m}`);
function check(ok, what) {
  if (!ok) throw new Error(`assertion failed: ${what}`);
}

async function admin(method, p, body) {
  const r = await fetch(`${BASE}${p}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  // Before any page script: record every CSP violation the page reports.
  await context.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page = await context.newPage();
  const foreign = [];
  const firstLoad = new Map();
  page.on('request', (r) => {
    if (!r.url().startsWith(`${BASE}/`)) foreign.push(r.url());
  });
  page.on('response', async (r) => {
    const u = new URL(r.url());
    if (u.pathname.startsWith('/admin/ui') && !firstLoad.has(u.pathname) && r.status() === 200) {
      firstLoad.set(u.pathname, r.body().catch(() => Buffer.alloc(0)));
    }
  });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource.*(404|412|422|401)/.test(m.text())) pageErrors.push(m.text());
  });

  async function audit(label) {
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource);
    const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
    check(result.testEngine?.name === 'axe-core' && result.passes.length > 0, `axe ran on ${label}`);
    for (const v of result.violations) {
      if (v.impact === 'serious' || v.impact === 'critical') {
        failures.push(`axe ${label}: ${v.id} (${v.impact}) at ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
      }
    }
  }
  async function shot(name) {
    const file = `${name}.png`;
    await page.screenshot({ path: path.join(OUT, file), fullPage: true });
    screenshots.push(file);
  }
  /** axe, a screenshot, and no horizontal scrolling on the current viewport. */
  async function record(name) {
    await audit(name);
    await shot(name);
    const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
    if (scroll > width + 1) failures.push(`${name}: the page scrolls sideways (${scroll} > ${width})`);
  }
  const dialog = (name) => page.getByRole('dialog', { name });

  // ---- Flow 1: create, copy, use, revoke ----------------------------------------------------------
  step('sign in');
  await page.goto(`${BASE}/admin/ui`);
  const credential = page.getByLabel('Admin token or admin key');
  await credential.waitFor();
  await record('01-sign-in');
  await credential.focus();
  await page.keyboard.type(TOKEN);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'API keys' }).waitFor();
  const stored = await page.evaluate(() => ({
    session: sessionStorage.getItem('keygate.admin-credential'), local: localStorage.length, url: location.href,
  }));
  check(stored.session === TOKEN, 'the credential is in sessionStorage');
  check(stored.local === 0, 'nothing in localStorage');
  check(!stored.url.includes(TOKEN), 'the credential is not in the URL');
  await page.locator('#key-table').waitFor();
  await record('02-key-list');

  step('create wizard');
  const name = `console key ${rand}`;
  const group = `console-${rand}`;
  await page.getByRole('button', { name: 'Create key' }).focus();
  await page.keyboard.press('Enter');
  const wizard = dialog('Create key');
  await wizard.waitFor();
  await wizard.getByLabel('Name', { exact: true }).fill(name);
  await wizard.getByLabel('Description').fill('Created by the browser test');
  await wizard.getByLabel('Group').fill(group);
  await wizard.getByLabel('Environment').selectOption('live');
  await wizard.getByLabel('Expiration').selectOption('1d');
  await record('03-create-details');
  await wizard.getByRole('button', { name: 'Next' }).click();
  const licenseRead = wizard.getByRole('checkbox', { name: 'license:read' });
  await licenseRead.waitFor();
  check(await wizard.getByRole('checkbox', { name: 'keyring.*.encrypt' }).count() === 1,
    'the policy\'s templated scope is offered as a wildcard grant');
  await licenseRead.focus();
  await page.keyboard.press('Space');
  check(await licenseRead.isChecked(), 'a scope is ticked from the keyboard');
  await record('04-create-scopes');
  await wizard.getByRole('button', { name: 'Next' }).click();
  const tierSelect = wizard.getByLabel('Rate tier');
  await tierSelect.locator('option', { hasText: 'standard' }).waitFor({ state: 'attached' });
  const tierOptions = await tierSelect.locator('option').allInnerTexts();
  check(JSON.stringify([...tierOptions].sort()) === JSON.stringify(['free', 'none', 'standard']),
    `the rate tiers are the policy's, plus none: ${tierOptions}`);
  await tierSelect.selectOption('standard');
  await wizard.getByLabel('Credits', { exact: true }).fill('100');
  await wizard.getByLabel('Refill to (credits)').fill('100');
  await wizard.getByLabel('Refill every').selectOption('month');
  await wizard.getByLabel('On day of the month').fill('1');
  await wizard.getByLabel('Metadata (JSON object)').fill('{"team": "console"}');
  await record('05-create-limits');
  await wizard.getByRole('button', { name: 'Create key' }).click();

  step('show once');
  const once = dialog('Key created');
  await once.waitFor();
  const key = await page.locator('#new-key').inputValue();
  check(/^kg_live_[0-9a-f]{16}_[0-9a-f]{64}_[0-9a-f]{8}$/.test(key), `a key is shown: ${key.slice(0, 12)}…`);
  const id = key.split('_')[2];
  await once.getByRole('button', { name: 'Copy key' }).click();
  await once.getByText('Copied to the clipboard.').waitFor();
  check(await page.evaluate(() => navigator.clipboard.readText()) === key, 'the clipboard holds the key');
  const done = once.getByRole('button', { name: 'Done' });
  check(await done.isDisabled(), 'Done is disabled before the confirmation');
  for (let i = 0; i < 3; i++) await page.keyboard.press('Escape');
  await page.waitForTimeout(200);
  check(await once.isVisible(), 'Escape does not close the show-once dialog');
  await record('06-show-once');
  await once.getByLabel('I have stored the key in a safe place').check();
  await done.click();
  await page.getByRole('heading', { name }).waitFor();
  check(!(await page.evaluate(() => document.body.innerText)).includes(key), 'the key is gone from the page');
  check(page.url().endsWith(`#/keys/${id}`), 'the new key\'s page opens');
  await page.locator('#key-props').getByText('license:read').waitFor();
  const props = async (sel) => (await page.locator(sel).innerText()).trim();
  check(await props('#key-rate-tier') === 'standard', `the detail shows the tier: ${await props('#key-rate-tier')}`);
  check(await props('#key-credits') === '100', `the detail shows the credits: ${await props('#key-credits')}`);
  check(await props('#key-credits-leased') === '0', `nothing leased yet: ${await props('#key-credits-leased')}`);
  check(/UTC/.test(await props('#key-next-refill')), `the next refill: ${await props('#key-next-refill')}`);
  check(await props('#key-last-used') === 'not recorded yet', `not used yet: ${await props('#key-last-used')}`);
  check(await page.locator('#usage').getAttribute('data-allowed') === '0', 'no usage yet');
  await record('07-key-detail');

  step('use the key on a protected route');
  const used = await fetch(`${BASE}/licenses/console-${rand}`, { headers: { Authorization: `Bearer ${key}` } });
  check(used.status === 200 && used.headers.get('x-origin') === 'echo', `the key works: ${used.status}`);
  const echoed = await used.json();
  check(echoed.headers['x-key-id'] === id, 'the origin received the key\'s id');

  step('the detail shows the use: last used, the usage chart (after the usage flush)');
  const refresh = page.getByRole('button', { name: 'Refresh' });
  let seen = {};
  for (let i = 0; i < 40; i++) {
    await refresh.click();
    await page.waitForTimeout(500);
    seen = {
      lastUsed: await page.locator('#key-last-used time').count(),
      allowed: Number(await page.locator('#usage').getAttribute('data-allowed')),
      credits: await props('#key-credits'),
    };
    if (seen.lastUsed && seen.allowed >= 1 && seen.credits === '99') break;
  }
  check(seen.lastUsed === 1, `last_used_at is shown: ${await props('#key-last-used')}`);
  check(seen.allowed === 1, `the usage chart counts the allowed request: ${JSON.stringify(seen)}`);
  check(seen.credits === '99', `the request spent one credit: ${JSON.stringify(seen)}`);
  const today = new Date().toISOString().slice(0, 10);
  const usageRow = page.locator('#usage-table tbody tr', { hasText: today });
  check((await usageRow.locator('td').first().innerText()).trim() === '1', 'today\'s row of the usage table: 1 allowed');
  check((await page.locator('#usage svg[role="img"]').getAttribute('aria-label')).includes('1 allowed'),
    'the chart\'s accessible name has the totals');
  check(await page.locator('#usage rect.allowed[height]:not([height="0"])').count() === 1, 'one bar of allowed requests');
  await record('08-key-detail-usage');

  step('top up: a concurrent change of the balance is a 412, then the top-up');
  const versionBefore = Number(await props('#key-version'));
  const concurrent = await admin('POST', `/admin/keys/${id}/credits`, { add: 1 });
  check(concurrent.status === 200 && concurrent.body.version === versionBefore + 1, `a concurrent top-up: ${concurrent.status}`);
  const topUp = page.locator('form.topup');
  await topUp.getByLabel('Change').selectOption('add');
  await topUp.getByLabel('Credits', { exact: true }).fill('50');
  await topUp.getByRole('button', { name: 'Add credits' }).click();
  const creditsConflict = page.locator('#credits-conflict');
  await creditsConflict.waitFor();
  check((await creditsConflict.innerText()).includes('412'), 'the top-up with the old version is refused with 412');
  check(await page.evaluate(() => document.activeElement?.id) === 'credits-conflict', 'focus moves to the 412');
  await record('09-top-up-conflict');
  await creditsConflict.getByRole('button', { name: 'Reload the key' }).click();
  await page.locator('#key-credits', { hasText: '100' }).waitFor();
  await topUp.getByLabel('Credits', { exact: true }).fill('50');
  await topUp.getByRole('button', { name: 'Add credits' }).click();
  await page.getByText('Added 50 credits: 150 left.').waitFor();
  check(await props('#key-credits') === '150', `the balance after the top-up: ${await props('#key-credits')}`);
  const versionAfterTopUp = Number(await props('#key-version'));
  check(versionAfterTopUp === versionBefore + 2, `each change of the balance is a version: ${versionAfterTopUp}`);
  await record('10-credits-added');

  step('revoke from the list');
  await page.getByRole('link', { name: 'API keys' }).click();
  const filters = page.getByRole('search', { name: 'Filter keys' });
  await filters.getByLabel('Group').fill(group);
  await filters.getByRole('button', { name: 'Apply' }).click();
  const row = page.locator(`tr[data-key-id="${id}"]`);
  await row.waitFor();
  check((await page.locator('#key-table tbody tr').count()) === 1, 'the group filter shows one key');
  const rowText = await row.innerText();
  check(rowText.includes('active') && rowText.includes('standard') && rowText.includes('150'),
    `the list shows the key active, its tier and credits: ${rowText}`);
  await record('11-key-list-filtered');
  await row.getByText('Actions').click();
  await row.getByRole('button', { name: 'Revoke…' }).click();
  const revoke = dialog(`Revoke ${name}`);
  await revoke.waitFor();
  const confirmBox = revoke.getByLabel(`Type the name of key ${id}, ${name}, to confirm`);
  await confirmBox.fill('not the name');
  check(await revoke.getByRole('button', { name: 'Revoke key' }).isDisabled(), 'revoke needs the typed name');
  await confirmBox.fill(name);
  await revoke.getByLabel('Reason (kept in the record)').fill('browser test');
  await record('12-revoke-confirm');
  await revoke.getByRole('button', { name: 'Revoke key' }).click();
  await row.getByText('revoked').waitFor();
  let after;
  for (let i = 0; i < 25; i++) {
    after = await fetch(`${BASE}/licenses/console-${rand}-after`, { headers: { Authorization: `Bearer ${key}` } });
    if (after.status === 401) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  check(after.status === 401, `the revoked key is refused: ${after.status}`);
  check((await after.json()).code === 'revoked_key', 'with revoked_key');

  step('audit log');
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.locator('#audit-table').waitFor();
  await page.locator('#audit-table tr', { hasText: id }).filter({ hasText: 'key.revoke' }).first().waitFor();
  check(await page.locator('#audit-table tr', { hasText: id }).filter({ hasText: 'key.credits' }).count() === 2,
    'the two top-ups are in the audit log');
  await record('13-audit-log');

  // ---- Flow 2: validation error, concurrent edit, 412 ---------------------------------------------
  step('validation error next to its field');
  const created = await admin('POST', '/admin/keys', { name: `console edit ${rand}`, scopes: ['license:read'] });
  check(created.status === 201, `created through the API: ${created.status}`);
  const editId = created.body.record.id;
  await page.goto(`${BASE}/admin/ui#/keys/${editId}`);
  await page.getByRole('heading', { name: `console edit ${rand}` }).waitFor();
  const ips = page.getByLabel('IP allowlist');
  await ips.fill('10.0.0.1/8');
  await page.getByRole('button', { name: 'Save changes' }).click();
  const ipError = page.locator('[data-field-error="edit-ip_allowlist"]');
  await ipError.waitFor();
  check((await ipError.innerText()).includes('10.0.0.0/8'), `the server's message is next to the field: ${await ipError.innerText()}`);
  check(await ips.getAttribute('aria-invalid') === 'true', 'the field is marked invalid');
  check((await ips.getAttribute('aria-describedby')).includes('edit-ip_allowlist-error'), 'the error describes the field');
  await record('14-validation-error');

  step('concurrent edit, 412');
  await ips.fill('10.0.0.0/8');
  await page.getByLabel('Name', { exact: true }).fill(`console edit ${rand} mine`);
  const theirs = await admin('PATCH', `/admin/keys/${editId}`, { name: `console edit ${rand} theirs` });
  check(theirs.status === 200, `the concurrent change: ${theirs.status}`);
  await page.getByRole('button', { name: 'Save changes' }).click();
  const conflict = page.locator('#edit-conflict');
  await conflict.waitFor();
  check((await conflict.innerText()).includes('412'), 'the 412 is shown');
  await record('15-conflict-412');
  const current = await admin('GET', `/admin/keys/${editId}`);
  check(current.body.name === `console edit ${rand} theirs` && current.body.ip_allowlist.length === 0,
    'the concurrent change was not overwritten');
  await conflict.getByRole('button', { name: 'Reload the key' }).click();
  await page.getByRole('heading', { name: `console edit ${rand} theirs` }).waitFor();

  step('phone-sized viewport');
  await page.setViewportSize({ width: 390, height: 844 });
  await record('16-phone-key-detail');
  await page.getByRole('link', { name: 'API keys' }).click();
  await page.locator('#key-table').waitFor();
  await record('17-phone-key-list');
  await page.goto(`${BASE}/admin/ui#/keys/${id}`);
  await page.locator('#usage-table').waitFor();
  await record('18-phone-key-usage');

  const csp = await page.evaluate(() => window.__csp);
  if (csp.length) failures.push(`the CSP blocked: ${csp.join('; ')}`);
  if (foreign.length) failures.push(`requests to other origins: ${foreign.join(', ')}`);
  if (pageErrors.length) failures.push(`page errors: ${pageErrors.join('; ')}`);

  const files = {};
  let gzip = 0;
  let raw = 0;
  for (const [p, body] of firstLoad) {
    const b = await body;
    const gz = zlib.gzipSync(b, { level: 9 }).length;
    files[p] = { bytes: b.length, gzip: gz };
    gzip += gz;
    raw += b.length;
  }
  check(files['/admin/ui'] && files['/admin/ui/console.js'] && files['/admin/ui/console.css'], `the first load: ${Object.keys(files)}`);
  fs.writeFileSync(path.join(OUT, 'size.json'), JSON.stringify({ files, raw, gzip }, null, 2));
  if (failures.length) throw new Error(`\n  ${failures.join('\n  ')}`);
  console.log(JSON.stringify({
    created_id: id, edited_id: editId, version_after_top_up: versionAfterTopUp, screenshots, size: { raw, gzip, files },
  }));
} catch (e) {
  if (page) await page.screenshot({ path: path.join(OUT, 'failure.png'), fullPage: true }).catch(() => {});
  console.error(`console-test: FAILED: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
