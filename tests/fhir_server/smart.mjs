// SMART App Launch (v2) authorization server in front of the test FHIR server, built on
// `oidc-provider` (a certified OpenID Connect / OAuth 2.0 server library; pinned in package.json).
//
// What oidc-provider does: the authorization and token endpoints, PKCE (S256), authorization codes,
// opaque access tokens bound to the FHIR base as their resource (RFC 8707: SMART's `aud`), id_tokens
// (openid fhirUser), token revocation (RFC 7009) and introspection (RFC 7662), sessions and cookies.
// What this file adds, as an EHR would:
//   - launch contexts: the EHR registers one (POST /$launch {patient, appContext}) and passes its id
//     to the app (`launch`); the grant keeps it, and the token response carries `patient`,
//     `appContext` and `need_patient_banner` (SMART "launch context", CDS Hooks smart links);
//   - the interaction: the EHR user is signed in (practitioner `dr-test`); an EHR launch is approved
//     at once; a standalone launch asking for `launch/patient` shows a patient picker first;
//   - SMART scopes (v1 `.read`/`.write`, v2 `.rs`/`.c`/`.cruds`) for the FHIR base as resource server;
//   - `check(req, base, path, query)`: the bearer check of every FHIR call (token known, not expired
//     or revoked, issued for this FHIR base, scope allows the interaction on the type, and a patient
//     token only reaches its own patient's compartment);
//   - `expire(token)` for tests: the token's clock runs out now (POST /$expire {token}).

import crypto from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const USER = 'dr-test';
const SMART_TYPES = ['Patient', 'Condition', 'Observation', 'MedicationRequest', 'MedicationStatement', 'Procedure',
  'Immunization', 'ServiceRequest', 'Encounter', 'AllergyIntolerance', 'DiagnosticReport', 'Practitioner', '*'];
const V1 = ['read', 'write', '*'];
const V2 = ['r', 's', 'rs', 'c', 'cu', 'cruds', 'cud', 'u', 'd'];

function smartScopes() {
  const out = [];
  for (const who of ['patient', 'user']) {
    for (const type of SMART_TYPES) for (const p of [...V1, ...V2]) out.push(`${who}/${type}.${p}`);
  }
  return out.join(' ');
}

/** May this scope set do `action` ('read' | 'search' | 'create' | 'update' | 'delete') on `type`? */
export function permits(scope, type, action) {
  const letter = { read: 'r', search: 's', create: 'c', update: 'u', delete: 'd' }[action];
  const v1 = action === 'read' || action === 'search' ? 'read' : 'write';
  return String(scope || '').split(/\s+/).some((s) => {
    const m = /^(patient|user|system)\/([A-Za-z]+|\*)\.([a-z*]+)$/.exec(s);
    if (!m || (m[2] !== '*' && m[2] !== type)) return false;
    const p = m[3];
    return p === '*' || p === v1 || (/^c?r?u?d?s?$/.test(p) && p.includes(letter));
  });
}

/** A Map-backed oidc-provider adapter (like its memory adapter, but tests can reach a token's payload). */
function makeAdapter(store) {
  return class MapAdapter {
    constructor(name) { this.name = name; }
    key(id) { return `${this.name}:${id}`; }
    async upsert(id, payload, expiresIn) {
      store.set(this.key(id), { payload: { ...payload }, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
      if (payload.grantId) {
        const g = `grant:${payload.grantId}`;
        store.set(g, [...(store.get(g) || []), this.key(id)]);
      }
      if (payload.uid) store.set(`uid:${payload.uid}`, id);
    }
    async find(id) {
      const hit = store.get(this.key(id));
      return hit ? { ...hit.payload } : undefined;
    }
    async findByUid(uid) { const id = store.get(`uid:${uid}`); return id ? this.find(id) : undefined; }
    async findByUserCode() { return undefined; }
    async consume(id) { const hit = store.get(this.key(id)); if (hit) hit.payload.consumed = Math.floor(Date.now() / 1000); }
    async destroy(id) { store.delete(this.key(id)); }
    async revokeByGrantId(grantId) {
      for (const k of store.get(`grant:${grantId}`) || []) store.delete(k);
      store.delete(`grant:${grantId}`);
    }
  };
}

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

export class SmartServer {
  /**
   * @param {object} o
   * @param {string} o.root      e.g. http://127.0.0.1:4321 (scheme://host:port of this server)
   * @param {string} o.base      FHIR base path, e.g. /fhir/R4
   * @param {Array<{client_id: string, redirect_uris: string[]}>} o.clients  public SMART clients
   * @param {number} o.accessTokenTtl seconds
   * @param {(type: string, id: string) => Promise<object|undefined>} o.read  read a resource (for pickers and compartment checks)
   * @param {() => Promise<object[]>} o.patients  every Patient (for the standalone picker)
   */
  constructor({ root, base, clients, accessTokenTtl = 3600, read, patients }) {
    this.root = root;
    this.base = base;
    this.fhirBase = `${root}${base}`;
    this.issuer = `${root}/oauth`;
    this.read = read;
    this.patients = patients;
    this.store = new Map();
    this.launches = new Map(); // launch id -> {patient, appContext}
    this.grantContext = new Map(); // grantId -> {patient, appContext}
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-fhir-server-1', use: 'sig', alg: 'RS256' };
    const fhirBase = this.fhirBase;
    const self = this;
    this.provider = new Provider(this.issuer, {
      adapter: makeAdapter(this.store),
      clients: clients.map((c) => ({
        client_id: c.client_id, redirect_uris: c.redirect_uris, token_endpoint_auth_method: 'none',
        grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
      })),
      jwks: { keys: [jwk] },
      cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
      scopes: ['openid', 'offline_access', 'fhirUser', 'profile', 'launch', 'launch/patient', 'online_access'],
      claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
      conformIdTokenClaims: false,
      extraParams: ['launch', 'aud'],
      pkce: { required: () => true },
      ttl: { AccessToken: accessTokenTtl, AuthorizationCode: 60, IdToken: 3600, Interaction: 600, Session: 3600, Grant: 3600 },
      findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub, fhirUser: `${fhirBase}/Practitioner/${sub}`, name: 'Dr Test' }) }),
      interactions: { url: (ctx, interaction) => `/oauth/interaction/${interaction.uid}` },
      features: {
        devInteractions: { enabled: false },
        revocation: { enabled: true },
        introspection: { enabled: true },
        userinfo: { enabled: true },
        resourceIndicators: {
          enabled: true,
          // SMART's `aud` names the FHIR server the token is for: it is the resource indicator.
          defaultResource: async (ctx, client, oneOf) => (oneOf ? oneOf[0] : ctx.oidc.params.aud || fhirBase),
          useGrantedResource: async () => true,
          getResourceServerInfo: async (ctx, resource) => {
            if (resource.replace(/\/+$/, '') !== fhirBase) throw new errors.InvalidTarget(`this server issues tokens for ${fhirBase} only`);
            return { scope: smartScopes(), audience: fhirBase, accessTokenFormat: 'opaque', accessTokenTTL: accessTokenTtl };
          },
        },
      },
      renderError: async (ctx, out) => {
        ctx.type = 'html';
        ctx.body = `<!doctype html><html lang="en"><head><title>Sign-in error</title></head><body><main><h1>Sign-in error</h1>`
          + `<p role="alert">${esc(out.error)}: ${esc(out.error_description)}</p></main></body></html>`;
      },
    });
    this.provider.proxy = false;
    // The SMART launch context goes into the token response (patient, appContext, need_patient_banner).
    this.provider.use(async (ctx, next) => {
      await next();
      if (ctx.method === 'POST' && /\/token$/.test(ctx.path) && ctx.status === 200 && ctx.body?.access_token) {
        const at = await self.provider.AccessToken.find(ctx.body.access_token);
        const context = at && self.grantContext.get(at.grantId);
        if (context?.patient) ctx.body.patient = context.patient;
        if (context?.appContext) ctx.body.appContext = context.appContext;
        ctx.body.need_patient_banner = true;
      }
    });
    this.callback = this.provider.callback();
  }

  smartConfiguration() {
    const o = this.issuer;
    return {
      issuer: o,
      jwks_uri: `${o}/jwks`,
      authorization_endpoint: `${o}/auth`,
      token_endpoint: `${o}/token`,
      revocation_endpoint: `${o}/token/revocation`,
      introspection_endpoint: `${o}/token/introspection`,
      userinfo_endpoint: `${o}/me`,
      grant_types_supported: ['authorization_code', 'refresh_token'],
      response_types_supported: ['code'],
      token_endpoint_auth_methods_supported: ['none'],
      code_challenge_methods_supported: ['S256'],
      scopes_supported: ['openid', 'fhirUser', 'launch', 'launch/patient', 'offline_access', 'online_access',
        'patient/*.read', 'patient/*.rs', 'user/*.read', 'user/*.rs', 'patient/ServiceRequest.write', 'patient/ServiceRequest.c'],
      capabilities: ['launch-ehr', 'launch-standalone', 'client-public', 'context-ehr-patient', 'context-standalone-patient',
        'context-banner', 'permission-patient', 'permission-user', 'permission-v1', 'permission-v2', 'sso-openid-connect',
        'authorize-post'],
    };
  }

  /** The EHR makes a launch context for the app it opens; the id is all the app is given. */
  createLaunch({ patient, appContext }) {
    const id = crypto.randomBytes(16).toString('hex');
    this.launches.set(id, { patient: patient || null, appContext: appContext || null });
    return id;
  }

  /** Route /oauth/*: the interaction pages here, everything else to oidc-provider. */
  async handle(req, res, url) {
    const m = /^\/oauth\/interaction\/([A-Za-z0-9_-]+)$/.exec(url.pathname);
    if (m) return this.interaction(req, res, url);
    // oidc-provider is mounted at /oauth: it sees the path below it, and builds URLs from the issuer.
    req.originalUrl = req.url;
    req.url = req.url.slice('/oauth'.length) || '/';
    return this.callback(req, res);
  }

  async interaction(req, res, url) {
    let details;
    try {
      details = await this.provider.interactionDetails(req, res);
    } catch (err) {
      return page(res, 400, 'Sign-in expired', `<p role="alert">${esc(err.message)}: start the launch again.</p>`);
    }
    const { prompt, params } = details;
    if (prompt.name === 'login') {
      return this.provider.interactionFinished(req, res, { login: { accountId: USER } }, { mergeWithLastSubmission: false });
    }
    const scopes = new Set(String(params.scope || '').split(/\s+/));
    let context = { patient: null, appContext: null };
    if (params.launch) {
      const launch = this.launches.get(params.launch);
      if (!launch) return page(res, 400, 'Unknown launch', '<p role="alert">This launch is unknown or has expired: open the app from the EHR again.</p>');
      context = { ...launch };
    } else if (scopes.has('launch/patient')) {
      const form = req.method === 'POST' ? new URLSearchParams(await body(req)) : null;
      const chosen = form?.get('patient');
      if (!chosen || !(await this.read('Patient', chosen))) {
        const rows = (await this.patients()).map((p) => {
          const name = (p.name?.[0]?.given || []).concat(p.name?.[0]?.family || []).join(' ') || p.id;
          return `<li><label><input type="radio" name="patient" value="${esc(p.id)}" required> ${esc(name)} (${esc(p.id)}, born ${esc(p.birthDate || '?')})</label></li>`;
        }).join('');
        return page(res, 200, 'Choose a patient', `<form method="post"><fieldset><legend>Patient for this app</legend><ul>${rows}</ul></fieldset>`
          + '<button type="submit">Continue</button></form>');
      }
      context.patient = chosen;
    }
    const grant = new this.provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    const oidc = [...scopes].filter((s) => ['openid', 'fhirUser', 'profile', 'offline_access', 'online_access', 'launch', 'launch/patient'].includes(s));
    grant.addOIDCScope(oidc.join(' '));
    if (scopes.has('fhirUser')) grant.addOIDCClaims(['fhirUser']);
    const smart = [...scopes].filter((s) => permitsShape(s));
    const resource = params.aud || this.fhirBase;
    if (smart.length) grant.addResourceScope(resource, smart.join(' '));
    const grantId = await grant.save();
    this.grantContext.set(grantId, context);
    return this.provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  /**
   * The bearer check of a FHIR call: {ok: true, token} or {ok: false, status, error, description}.
   * @param {string|null} header the Authorization header
   * @param {string} method  HTTP method
   * @param {string} path    FHIR path below the base, e.g. "Observation" or "Patient/p1"
   * @param {URLSearchParams} query
   */
  async check(header, method, path, query, body) {
    const m = /^Bearer\s+(\S+)$/i.exec(header || '');
    if (!m) return deny(401, 'invalid_request', 'this FHIR server needs a bearer token (SMART App Launch)');
    const at = await this.provider.AccessToken.find(m[1]);
    if (!at) return deny(401, 'invalid_token', 'the access token is unknown, expired or revoked');
    if (at.aud !== this.fhirBase && !(Array.isArray(at.aud) && at.aud.includes(this.fhirBase))) {
      return deny(401, 'invalid_token', 'the access token was issued for another server');
    }
    const [type, id] = path.split('/');
    const action = method === 'GET' ? (id ? 'read' : 'search') : method === 'POST' ? 'create' : method === 'PUT' ? 'update' : 'delete';
    if (!type || !/^[A-Z][A-Za-z]+$/.test(type) || !permits(at.scope, type, action)) {
      return deny(403, 'insufficient_scope', `the token's scopes do not allow ${action} on ${type || 'the server root'}`);
    }
    const context = this.grantContext.get(at.grantId) || {};
    const patientScoped = String(at.scope).split(/\s+/).some((s) => s.startsWith('patient/') && permits(s, type, action));
    const userScoped = String(at.scope).split(/\s+/).some((s) => s.startsWith('user/') && permits(s, type, action));
    if (patientScoped && !userScoped) {
      const p = context.patient;
      if (!p) return deny(403, 'insufficient_scope', 'a patient-scoped token without a patient in context');
      const mine = (ref) => ref === `Patient/${p}` || ref === p || ref === `${this.fhirBase}/Patient/${p}`;
      if (type === 'Patient') {
        if (action === 'read' && id !== p) return deny(403, 'insufficient_scope', 'outside the patient in context');
        if (action === 'search' && !(mine(query.get('_id')) || mine(query.get('patient')))) return deny(403, 'insufficient_scope', 'search outside the patient in context');
      } else if (action === 'search') {
        if (!(mine(query.get('patient')) || mine(query.get('subject')))) return deny(403, 'insufficient_scope', 'searches must name the patient in context (patient=...)');
      } else if (action === 'read') {
        const res = await this.read(type, id);
        if (res && !(mine(res.subject?.reference) || mine(res.patient?.reference))) return deny(403, 'insufficient_scope', 'outside the patient in context');
      } else if (action === 'create' || action === 'update') {
        if (!(mine(body?.subject?.reference) || mine(body?.patient?.reference))) return deny(403, 'insufficient_scope', 'writes must be about the patient in context');
      }
    }
    return { ok: true, token: at };
  }

  /** Tests: make this access token's lifetime end now (as if its clock ran out). */
  expire(token) {
    const key = `AccessToken:${token}`;
    const hit = this.store.get(key);
    if (!hit) return false;
    hit.payload.exp = Math.floor(Date.now() / 1000) - 24 * 3600; // well past any clock tolerance
    return true;
  }
}

function permitsShape(s) {
  return /^(patient|user|system)\/([A-Za-z]+|\*)\.([a-z*]+)$/.test(s);
}

function deny(status, error, description) {
  return { ok: false, status, error, description };
}

function body(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function page(res, status, title, html) {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>`
    + '<style>body{font:15px system-ui,sans-serif;margin:2rem}li{list-style:none;margin:.3rem 0}button{margin-top:1rem;padding:.4rem 1rem}</style>'
    + `</head><body><main><h1>${esc(title)}</h1>${html}</main></body></html>`);
}
