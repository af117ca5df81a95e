// Browser driver for the tests and bench/cards.py: one headless Chromium (Debian's `chromium`,
// driven by playwright-core) per process, commands as JSON lines on stdin, one JSON line back
// per command on stdout: {"id", "ok": true, "result": ...} or {"id", "ok": false, "error": "..."}.
//
// It also plays the EHR: it renders CDS Hooks cards the way a CDS client does (summary, detail as
// CommonMark + GFM tables through markdown-it with raw HTML off, suggestion and link buttons), and
// when the user clicks a card's `smart` link it registers a launch context with the EHR's
// authorization server (POST {fhirRoot}/$launch: patient + the link's appContext) and opens the app
// at `url?iss=<fhir base>&launch=<id>`, as SMART App Launch's EHR launch says.
//
// Commands (`op`):
//   render_cards  {cards, screenshot?}                     -> {heights: [px], total: px}
//   ehr_launch    {cards, card, fhirBase, fhirRoot, patient, screenshot?, timeout?}
//                                                          -> app state after the launch (see `appState`)
//   open          {url, screenshot?, timeout?}             -> app state (standalone launch, reloads)
//   pick_patient  {patient, screenshot?, timeout?}         -> app state after choosing a patient on the AS page
//   axe           {}                                       -> {violations: [{id, impact, nodes}]}
//   keyboard      {}                                       -> what Tab reaches and what Enter/Space does
//   click         {selector, waitFor?, screenshot?, timeout?} -> app state after a click (and waitFor)
//   print_pdf     {path}                                   -> {bytes}
//   evaluate      {expression}                             -> the expression's value in the page
//   reload        {screenshot?, timeout?}                  -> app state after a reload
//   close         {}
// Exits when stdin closes (a dead test run leaves no browser behind).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import process from 'node:process';
import readline from 'node:readline';
import { AxeBuilder } from '@axe-core/playwright';
import MarkdownIt from 'markdown-it';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const CARD_WIDTH = 640; // the card column of a CDS client beside the chart (the CDS Hooks Sandbox's is ~600-700 px)

const md = new MarkdownIt({ html: false, linkify: false, typographer: false });
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

function cardsHtml(cards) {
  const items = cards.map((card, i) => {
    const suggestions = (card.suggestions || []).map((s, j) =>
      `<button type="button" class="suggestion" data-card="${i}" data-suggestion="${j}">${esc(s.label)}</button>`).join('');
    const links = (card.links || []).map((l, j) =>
      `<a class="link" href="${esc(l.url)}" data-card="${i}" data-link="${j}" data-type="${esc(l.type)}"`
      + ` data-app-context="${esc(l.appContext ?? '')}" target="_self">${esc(l.label)}</a>`).join('');
    return `<section class="card" data-card="${i}" aria-label="card ${i + 1}">
      <h2 class="summary">${esc(card.summary)}</h2>
      <div class="source">Source: ${esc(card.source?.label)}</div>
      <div class="detail">${md.render(card.detail || '')}</div>
      <div class="suggestions">${suggestions}</div>
      <div class="links">${links}</div>
    </section>`;
  }).join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>EHR: CDS cards</title><style>
    body { font: 14px/1.45 system-ui, sans-serif; margin: 16px; color: #222; }
    main { width: ${CARD_WIDTH}px; }
    .card { border: 1px solid #bbb; border-left: 6px solid #3b7ddd; border-radius: 4px; padding: 8px 12px; margin: 0 0 12px; }
    .summary { font-size: 15px; margin: 0 0 4px; }
    .source { color: #666; font-size: 12px; }
    .detail table { border-collapse: collapse; } .detail td, .detail th { border: 1px solid #ccc; padding: 2px 4px; vertical-align: top; }
    .suggestion { display: block; width: 100%; margin: 4px 0; padding: 6px; }
    .link { display: inline-block; margin: 4px 8px 0 0; }
  </style></head><body><main>${items}</main></body></html>`;
}

let browser;
let context;
let page;
let userDataDir;

async function start() {
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trial-cds-chromium-'));
  // A persistent context is how playwright takes a fresh --user-data-dir of our own.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    // playwright adds --headless itself when headless is true; the rest are the project's flags.
    args: FLAGS.filter((f) => f !== '--headless'),
    viewport: { width: 1280, height: 900 },
  });
  browser = context;
  page = context.pages()[0] || await context.newPage();
}

async function fresh() {
  // Each launch starts from a clean slate: no session storage or cookies of an earlier launch.
  await context.clearCookies();
  for (const p of context.pages()) if (p !== page) await p.close();
  await page.goto('about:blank');
}

async function shot(file, fullPage = false) {
  if (!file) return;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await page.screenshot({ path: file, fullPage });
}

async function renderCards({ cards, screenshot }) {
  await fresh();
  await page.setContent(cardsHtml(cards));
  const heights = await page.$$eval('.card', (els) => els.map((e) => Math.round(e.getBoundingClientRect().height)));
  const total = await page.$eval('main', (e) => Math.round(e.getBoundingClientRect().height));
  await shot(screenshot, true);
  return { heights, total };
}

/** What the app shows: the checklist (statuses per trial, per criterion), or its message. */
async function appState(timeout = 60000) {
  const started = Date.now();
  await page.waitForSelector('[data-app-state="ready"], [data-app-state="error"], input[name="patient"]', { timeout });
  const waited = Date.now() - started;
  const state = await page.evaluate(() => {
    const root = document.querySelector('[data-app-state]');
    if (!root) { // the authorization server's page: a patient picker (standalone launch)
      return { state: document.querySelector('input[name="patient"]') ? 'pick' : 'unknown', message: null, trials: [],
        patients: [...document.querySelectorAll('input[name="patient"]')].map((i) => i.value) };
    }
    const trials = [...document.querySelectorAll('[data-trial]')].map((t) => ({
      id: t.dataset.trial,
      verdict: t.dataset.verdict,
      focused: t.dataset.focused === 'true',
      criteria: [...t.querySelectorAll('[data-criterion]')].map((c) => ({
        id: c.dataset.criterion, type: c.dataset.type, status: c.dataset.status,
        text: c.querySelector('.criterion-text')?.textContent ?? '' })),
      timelines: [...t.querySelectorAll('[data-timeline]')].map((s) => ({
        code: s.dataset.timeline, points: s.querySelectorAll('.point').length,
        threshold: s.querySelectorAll('.threshold').length })),
      missing: [...t.querySelectorAll('[data-missing-test]')].map((m) => m.dataset.missingTest),
    }));
    return {
      state: root.dataset.appState,
      message: document.querySelector('[role="alert"]')?.textContent?.trim() ?? null,
      patient: root.dataset.patient ?? null,
      evaluatedAt: root.dataset.evaluatedAt ?? null,
      firstChecklistMs: Number(root.dataset.firstChecklistMs ?? NaN),
      marks: root.dataset.marks ? JSON.parse(root.dataset.marks) : null,
      trials,
    };
  });
  return { ...state, waitedMs: waited, url: page.url() };
}

async function ehrLaunch({ cards, card, fhirBase, fhirRoot, patient, screenshot, timeout }) {
  await fresh();
  await page.setContent(cardsHtml(cards));
  const link = page.locator(`a.link[data-card="${card}"][data-type="smart"]`);
  const href = await link.getAttribute('href');
  const appContext = await link.getAttribute('data-app-context');
  // The EHR intercepts the click on a smart link, makes the launch context, and opens the app.
  await page.evaluate(() => document.addEventListener('click', (e) => {
    const a = e.target.closest('a.link[data-type="smart"]');
    if (a) { e.preventDefault(); window.__smartClicked = a.getAttribute('href'); }
  }, { capture: true }));
  await link.click();
  const clicked = await page.evaluate(() => window.__smartClicked);
  if (clicked !== href) throw new Error('the smart link click was not taken');
  const res = await fetch(`${fhirRoot}/$launch`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ patient, appContext: appContext || undefined }),
  });
  if (!res.ok) throw new Error(`launch context: HTTP ${res.status} ${await res.text()}`);
  const { launch } = await res.json();
  const url = new URL(href);
  url.searchParams.set('iss', fhirBase);
  url.searchParams.set('launch', launch);
  const clickAt = Date.now();
  await page.goto(url.toString());
  const state = await appState(timeout);
  state.launchToChecklistMs = Date.now() - clickAt;
  state.appContext = appContext;
  await shot(screenshot);
  return state;
}

async function open({ url, screenshot, timeout }) {
  await fresh();
  const at = Date.now();
  await page.goto(url);
  const state = await appState(timeout);
  state.launchToChecklistMs = Date.now() - at;
  await shot(screenshot);
  return state;
}

async function pickPatient({ patient, screenshot, timeout }) {
  const at = Date.now();
  await page.getByLabel(new RegExp(`\\b${patient}\\b`)).check();
  await page.getByRole('button', { name: /continue/i }).click();
  const state = await appState(timeout);
  state.launchToChecklistMs = Date.now() - at;
  await shot(screenshot);
  return state;
}

async function click({ selector, waitFor, screenshot, timeout }) {
  await page.locator(selector).first().click();
  if (waitFor) await page.waitForSelector(waitFor, { timeout: timeout ?? 60000 });
  const state = await appState(timeout);
  await shot(screenshot);
  return state;
}

async function axe() {
  const results = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']).analyze();
  return { violations: results.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length })) };
}

/** Walk the page with Tab: every interactive element reachable, focus visible, Enter works on a toggle. */
async function keyboard() {
  await page.evaluate(() => document.activeElement?.blur());
  await page.locator('body').focus();
  const seen = [];
  for (let i = 0; i < 400; i++) {
    await page.keyboard.press('Tab');
    const info = await page.evaluate(() => {
      const e = document.activeElement;
      if (!e || e === document.body) return null;
      const style = getComputedStyle(e);
      return { tag: e.tagName.toLowerCase(), id: e.id || null, name: (e.getAttribute('aria-label') || e.textContent || '').trim().slice(0, 60),
        outline: style.outlineStyle !== 'none' && style.outlineWidth !== '0px', boxShadow: style.boxShadow !== 'none',
        key: e.dataset.key || null };
    });
    if (!info) break;
    if (seen.length && seen[0].key && info.key === seen[0].key && info.name === seen[0].name) break;
    seen.push(info);
  }
  const interactive = await page.$$eval('button, a[href], input, select, textarea, summary, [tabindex]:not([tabindex="-1"])',
    (els) => els.filter((e) => !e.disabled && e.offsetParent !== null).length);
  // Enter on the first disclosure (details/summary) toggles it.
  let toggled = null;
  const summary = page.locator('details > summary').first();
  if (await summary.count()) {
    const before = await summary.evaluate((s) => s.parentElement.open);
    await summary.focus();
    await page.keyboard.press('Enter');
    const after = await summary.evaluate((s) => s.parentElement.open);
    toggled = before !== after;
  }
  return { reached: seen.length, interactive, focusVisible: seen.every((s) => s.outline || s.boxShadow), toggled, sample: seen.slice(0, 8) };
}

async function printPdf({ path: file }) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  await page.emulateMedia({ media: 'print' });
  const pdf = await page.pdf({ path: file, format: 'A4' });
  await page.emulateMedia({ media: 'screen' });
  return { bytes: pdf.length };
}

async function evaluate({ expression }) {
  return page.evaluate(expression);
}

async function reload({ screenshot, timeout }) {
  await page.reload();
  const state = await appState(timeout);
  await shot(screenshot);
  return state;
}

const ops = { evaluate, reload, render_cards: renderCards, ehr_launch: ehrLaunch, open, pick_patient: pickPatient, click, axe, keyboard, print_pdf: printPdf };

async function shutdown(code = 0) {
  try { await browser?.close(); } catch { /* already gone */ }
  try { if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true }); } catch { /* best effort */ }
  process.exit(code);
}

await start();
process.stdout.write(JSON.stringify({ event: 'ready', chromium: browser.browser()?.version?.() ?? null }) + '\n');
const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  chain = chain.then(async () => {
    let msg;
    try { msg = JSON.parse(line); } catch { return; }
    if (msg.op === 'close') return shutdown(0);
    const reply = { id: msg.id };
    try {
      const fn = ops[msg.op];
      if (!fn) throw new Error(`unknown op ${msg.op}`);
      reply.ok = true;
      reply.result = await fn(msg);
    } catch (err) {
      reply.ok = false;
      reply.error = String(err?.stack || err);
      try { reply.screenshotError = await page.content().then((c) => c.slice(0, 2000)); } catch { /* page gone */ }
    }
    process.stdout.write(JSON.stringify(reply) + '\n');
  });
});
rl.on('close', () => { chain.then(() => shutdown(0)); });
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => shutdown(0));
