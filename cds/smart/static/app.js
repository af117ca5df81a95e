// The clinician view: SMART App Launch second leg (fhirclient), the record read with the app's own
// access token, the evaluation from the trial-cds service, and the checklist per trial.
// Hand-written ES module, no build step: every piece of record text goes into the page through
// textContent (never innerHTML), and the page's CSP allows scripts from this origin only.
import { explain, showMessage } from './messages.js';

const SVG = 'http://www.w3.org/2000/svg';
const STATUS = {
  'met': { inclusion: ['Met', 'ok'], exclusion: ['Present', 'bad'] },
  'not-met': { inclusion: ['Not met', 'bad'], exclusion: ['Not present', 'ok'] },
  'unknown': { inclusion: ['Unknown', 'unknown'], exclusion: ['Unknown', 'unknown'] },
  'to-confirm': { review: ['To confirm', 'confirm'] },
};
const VERDICT = { 'likely-eligible': 'Likely eligible', 'possibly-eligible': 'Possibly eligible', 'excluded': 'Excluded' };
const ICON = { ok: '✓', bad: '✗', unknown: '?', confirm: '☐' };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || ['id', 'role', 'type', 'href', 'tabindex', 'scope', 'for', 'colspan'].includes(k)) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) node.append(c);
  return node;
}

function searchset(resources) {
  return { resourceType: 'Bundle', type: 'searchset', total: resources.length, entry: resources.map((resource) => ({ resource })) };
}

/** Read what the rules need, with the app's token, using the service's own query templates. */
async function readRecord(client, queries, patientId) {
  const prefetch = {};
  await Promise.all(queries.map(async (q) => {
    let url = q.template.replaceAll('{{context.patientId}}', encodeURIComponent(patientId));
    // Pages of 100 (as the service's own FHIR client asks): fewer round trips to the EHR.
    if (url.includes('?') && !/[?&]_count=/.test(url)) url += '&_count=100';
    if (!url.includes('?')) {
      prefetch[q.key] = await client.request(url);
    } else {
      const resources = await client.request(url, { pageLimit: 0, flat: true });
      prefetch[q.key] = searchset(resources.filter((r) => r && r.resourceType !== 'OperationOutcome'));
    }
  }));
  return prefetch;
}

async function evaluate(client, prefetch, patientId) {
  const token = client.state.tokenResponse || {};
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (token.id_token) headers.Authorization = `Bearer ${token.id_token}`;
  const response = await fetch('api/evaluate', {
    method: 'POST', headers, body: JSON.stringify({ patientId, prefetch, launch: token.appContext ?? null }),
  });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    const ref = body.correlationId ? ` (reference ${body.correlationId})` : '';
    throw Object.assign(new Error('authentication failed'), {
      userMessage: `The trial service did not accept this session${ref}: launch the app again from the EHR.`,
    });
  }
  if (!response.ok) {
    throw Object.assign(new Error(body.error || `HTTP ${response.status}`), {
      userMessage: `The trial service could not evaluate the record: ${body.error || `HTTP ${response.status}`}`,
    });
  }
  return body;
}

function patientBanner(patient, evaluatedAt) {
  const name = patient?.name?.[0];
  const shown = name ? [...(name.given || []), name.family].filter(Boolean).join(' ') : (patient?.id || 'Unknown patient');
  return el('header', { class: 'banner', 'aria-label': 'Patient' },
    el('p', {}, el('strong', { text: shown }), ` · ${patient?.gender || 'sex not recorded'} · born ${patient?.birthDate || 'unknown'}`),
    el('p', { class: 'muted', text: `Checked against the trials' criteria on ${new Date(evaluatedAt).toUTCString()}. A screening aid: the trial team decides eligibility.` }));
}

function badge(c) {
  const [label, tone] = (STATUS[c.checklist] || {})[c.type] || [c.status, 'unknown'];
  return el('span', { class: `badge ${tone}` }, el('span', { 'aria-hidden': 'true', text: `${ICON[tone] || ''} ` }), label);
}

function evidenceList(c) {
  const items = c.evidence.map((e) => el('li', {},
    e.label ? el('strong', { text: `${e.label}${e.value ? ' ' : ''}` }) : null,
    e.value ? `${e.value}` : '',
    e.date ? ` (${e.date})` : '',
    ...e.flags.map((f) => el('span', { class: `flag flag-${f.replaceAll(' ', '-')}`, text: f })),
    e.note ? el('span', { class: 'note', text: ` ${e.note}` }) : null));
  if (c.missing.length) items.push(el('li', { class: 'missing' }, el('strong', { text: 'Missing: ' }), c.missing.join(', ')));
  return items.length ? el('ul', { class: 'evidence' }, items) : el('span', { class: 'muted', text: 'no evidence recorded' });
}

function checklist(trial) {
  const rows = trial.criteria.map((c) => el('tr', { 'data-criterion': c.id, 'data-type': c.type, 'data-status': c.status, 'data-checklist': c.checklist },
    el('td', {}, badge(c)),
    el('td', {}, el('span', { class: 'kind', text: `${c.type === 'review' ? 'To confirm' : c.type === 'inclusion' ? 'Inclusion' : 'Exclusion'} ${c.id}` }),
      el('span', { class: 'criterion-text', text: c.text })),
    el('td', {}, evidenceList(c))));
  const counts = trial.criteria.reduce((acc, c) => { acc[c.checklist] = (acc[c.checklist] || 0) + 1; return acc; }, {});
  const caption = `Every criterion of ${trial.name}: ${counts.met || 0} met, ${counts['not-met'] || 0} not met, ${counts.unknown || 0} unknown, ${counts['to-confirm'] || 0} to confirm`;
  return el('table', { class: 'checklist', 'data-checklist-of': trial.researchStudy },
    el('caption', { text: caption }),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Status' }), el('th', { scope: 'col', text: 'Criterion (full text)' }), el('th', { scope: 'col', text: 'Evidence' }))),
    el('tbody', {}, rows));
}

function timeline(series) {
  const W = 520; const H = 150; const P = { l: 48, r: 12, t: 12, b: 28 };
  const times = series.points.map((p) => Date.parse(p.date));
  const values = series.points.map((p) => p.value);
  const th = series.threshold;
  const limits = th ? [th.value, th.low, th.high].filter((v) => typeof v === 'number') : [];
  let lo = Math.min(...values, ...limits); let hi = Math.max(...values, ...limits);
  if (lo === hi) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.1; lo -= pad; hi += pad;
  let t0 = Math.min(...times); let t1 = Math.max(...times);
  if (t0 === t1) { t0 -= 86400000 * 15; t1 += 86400000 * 15; }
  const x = (t) => P.l + ((t - t0) / (t1 - t0)) * (W - P.l - P.r);
  const y = (v) => H - P.b - ((v - lo) / (hi - lo)) * (H - P.t - P.b);
  const svg = document.createElementNS(SVG, 'svg');
  const latest = series.points[series.points.length - 1];
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${series.name} over time: ${series.points.length} results, latest ${latest.value} ${series.unit} on ${latest.date}`
    + (th ? `; the trial's threshold is ${th.text}` : ''));
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  add('line', { x1: P.l, y1: H - P.b, x2: W - P.r, y2: H - P.b, class: 'axis' });
  add('line', { x1: P.l, y1: P.t, x2: P.l, y2: H - P.b, class: 'axis' });
  add('text', { x: P.l - 6, y: y(hi - pad) + 4, 'text-anchor': 'end', class: 'tick' }, (hi - pad).toFixed(hi - pad < 10 ? 1 : 0));
  add('text', { x: P.l - 6, y: y(lo + pad) + 4, 'text-anchor': 'end', class: 'tick' }, (lo + pad).toFixed(lo + pad < 10 ? 1 : 0));
  add('text', { x: P.l, y: H - 8, class: 'tick' }, series.points[0].date);
  add('text', { x: W - P.r, y: H - 8, 'text-anchor': 'end', class: 'tick' }, latest.date);
  for (const v of limits) {
    add('line', { x1: P.l, y1: y(v), x2: W - P.r, y2: y(v), class: 'threshold' });
    add('text', { x: W - P.r, y: y(v) - 4, 'text-anchor': 'end', class: 'threshold-label' }, `threshold ${th.text}`);
  }
  if (series.points.length > 1) {
    add('polyline', { points: series.points.map((p) => `${x(Date.parse(p.date))},${y(p.value)}`).join(' '), class: 'series' });
  }
  for (const p of series.points) add('circle', { cx: x(Date.parse(p.date)), cy: y(p.value), r: 4, class: 'point' });
  const table = el('table', { class: 'visually-hidden' },
    el('caption', { text: `${series.name} results` }),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Date' }), el('th', { scope: 'col', text: 'Value' }))),
    el('tbody', {}, series.points.map((p) => el('tr', {}, el('td', { text: p.date }), el('td', { text: `${p.comparator || ''}${p.value} ${series.unit}` })))));
  return el('figure', { class: 'timeline', 'data-timeline': series.name },
    svg,
    el('figcaption', { text: `${series.name}${series.unit ? ` (${series.unit})` : ''}: latest ${latest.value} on ${latest.date}; `
      + (th ? `trial threshold ${th.text}` : series.thresholdNote || 'no threshold') }),
    table);
}

async function proposeOrders(client, trial, status, button) {
  button.disabled = true;
  status.textContent = `Proposing ${trial.orders.length} order(s) in the EHR…`;
  try {
    const made = [];
    for (const order of trial.orders) {
      const created = await client.create(order);
      made.push(`${created.resourceType}/${created.id}`);
    }
    status.textContent = `Proposed ${made.length} order(s) as drafts for the clinician to sign: ${made.join(', ')}.`;
    status.dataset.proposed = made.join(' ');
  } catch (err) {
    status.textContent = err?.status === 403 || err?.statusCode === 403
      ? 'The EHR did not allow this app to propose orders; order the tests listed above in the EHR.'
      : explain(err);
    button.disabled = false;
  }
}

function referralSummary(trial, patient, evaluatedAt) {
  const section = document.getElementById('referral');
  const name = patient?.name?.[0] ? [...(patient.name[0].given || []), patient.name[0].family].filter(Boolean).join(' ') : patient?.id;
  const met = trial.criteria.filter((c) => c.type !== 'review' && ((c.type === 'inclusion' && c.status === 'met') || (c.type === 'exclusion' && c.status === 'not-met')));
  const open = trial.criteria.filter((c) => c.type !== 'review' && c.status === 'unknown');
  const list = (items) => el('ul', {}, items.map((t) => el('li', { text: t })));
  section.replaceChildren(
    el('h1', { text: `Referral for clinical trial screening: ${trial.name}${trial.registryId ? ` (${trial.registryId})` : ''}` }),
    el('p', { text: `Patient: ${name} · born ${patient?.birthDate || 'unknown'} · ${patient?.gender || ''}` }),
    el('p', { text: `${VERDICT[trial.verdict]} as of ${new Date(evaluatedAt).toUTCString()} (trial-cds screening aid; the trial team decides eligibility).` }),
    el('h2', { text: 'Criteria the record shows as met' }),
    list(met.map((c) => `${c.text} — ${c.evidence.filter((e) => e.value).map((e) => `${e.label} ${e.value}${e.date ? ` (${e.date})` : ''}`).join('; ') || 'recorded'}`)),
    el('h2', { text: 'Not yet decided' }),
    list(open.length ? open.map((c) => `${c.text}${c.missing.length ? ` — missing: ${c.missing.join(', ')}` : ''}`) : ['nothing']),
    el('h2', { text: 'To confirm with the patient or investigator' }),
    list(trial.toConfirm.length ? trial.toConfirm : ['nothing']),
    trial.page ? el('p', { text: `Trial record: ${trial.page}` }) : null);
  section.dataset.referralFor = trial.researchStudy;
}

function trialSection(trial, client, patient, evaluatedAt) {
  const headingId = `t-${trial.researchStudy}`;
  const verdictClass = trial.verdict.replace('-eligible', '');
  const status = el('p', { role: 'status', class: 'order-status', 'aria-live': 'polite' });
  const propose = trial.orders.length
    ? el('button', { type: 'button', class: 'propose', 'data-action': 'propose', text: `Propose ${trial.orders.length} order(s) in the EHR` })
    : null;
  if (propose) propose.addEventListener('click', () => proposeOrders(client, trial, status, propose));
  const print = el('button', { type: 'button', 'data-action': 'print', text: 'Print referral summary' });
  print.addEventListener('click', () => { referralSummary(trial, patient, evaluatedAt); window.print(); });
  const open = trial.verdict !== 'excluded' && (trial.focused || !document.querySelector('[data-focused="true"]'));
  return el('section', { class: `trial ${verdictClass}`, 'data-trial': trial.researchStudy, 'data-verdict': trial.verdict,
    'data-focused': String(trial.focused), 'aria-labelledby': headingId },
  el('h2', { id: headingId, text: `${trial.name}${trial.registryId ? ` (${trial.registryId})` : ''}` }),
  el('p', { class: `verdict ${verdictClass}` }, el('strong', { text: VERDICT[trial.verdict] }), trial.keyFact ? ` — ${trial.keyFact}` : ''),
  el('details', { open }, el('summary', { text: `Checklist: ${trial.criteria.length} criteria, with evidence` }), checklist(trial)),
  trial.timelines.length
    ? el('details', { open, class: 'timelines' }, el('summary', { text: `Deciding values over time (${trial.timelines.length})` }), trial.timelines.map(timeline))
    : null,
  trial.missingTests.length
    ? el('div', { class: 'missing-tests' }, el('h3', { text: 'Missing or out-of-date tests' }),
      el('ul', {}, trial.missingTests.map((t) => el('li', { 'data-missing-test': t, text: t }))), propose, status)
    : null,
  el('div', { class: 'actions' }, print, trial.page ? el('a', { href: trial.page, target: '_blank', rel: 'noopener noreferrer', text: `Trial record${trial.registryId ? ` ${trial.registryId}` : ''}` }) : null));
}

function render(data, patient, client) {
  const app = document.getElementById('app');
  const main = app.querySelector('main');
  const mayJoin = data.trials.filter((t) => t.verdict !== 'excluded');
  const nav = el('nav', { 'aria-label': 'Trials' }, el('ul', {}, data.trials.map((t) => el('li', {},
    el('a', { href: `#t-${t.researchStudy}`, text: `${t.name}${t.registryId ? ` (${t.registryId})` : ''}` }), ` — ${VERDICT[t.verdict]}`))));
  main.replaceChildren(
    el('h1', { text: 'Clinical trials for this patient' }),
    el('p', { class: 'lead', text: mayJoin.length
      ? `${mayJoin.length} of ${data.trials.length} trials may fit. The checklist shows every criterion with the evidence from the record.`
      : `None of the ${data.trials.length} trials fits the record as it stands.` }),
    nav);
  app.prepend(patientBanner(patient, data.evaluatedAt));
  // focused (the trial whose card was clicked) first among equals: sections keep the service's order
  const sections = data.trials.map((t) => trialSection(t, client, patient, data.evaluatedAt));
  main.append(...sections);
  const focus = data.trials.find((t) => t.focused) || mayJoin[0] || data.trials[0];
  if (focus) referralSummary(focus, patient, data.evaluatedAt);
  app.dataset.patient = data.patientId;
  app.dataset.evaluatedAt = data.evaluatedAt;
  app.dataset.firstChecklistMs = String(Math.round(performance.now()));
  app.dataset.appState = 'ready';
  if (focus?.focused) document.getElementById(`t-${focus.researchStudy}`)?.scrollIntoView();
}

const marks = {};
const mark = (name) => { marks[name] = Math.round(performance.now()); };

try {
  const client = await FHIR.oauth2.ready();
  mark('token');
  const patientId = client.patient.id;
  if (!patientId) throw Object.assign(new Error('no patient'), { userMessage: 'The EHR did not give this app a patient. Open it from a patient\'s chart.' });
  const config = await (await fetch('api/config', { headers: { Accept: 'application/json' } })).json();
  document.getElementById('status').textContent = 'Reading the patient\'s record from the EHR…';
  const prefetch = await readRecord(client, config.queries, patientId);
  mark('read');
  document.getElementById('status').textContent = 'Checking the trials\' criteria…';
  const data = await evaluate(client, prefetch, patientId);
  mark('evaluated');
  const patient = prefetch.patient?.resourceType === 'Patient' ? prefetch.patient : Object.values(prefetch).find((r) => r?.resourceType === 'Patient');
  render(data, patient, client);
  mark('rendered');
  document.getElementById('app').dataset.marks = JSON.stringify(marks);
} catch (err) {
  showMessage(explain(err));
}
