// SMART App Launch, first leg: read the service's app config, check the FHIR server, then let
// fhirclient (vendored, pinned) authorize: EHR launch when the EHR passed `launch`, standalone
// (the authorization server asks for a patient) when it did not. PKCE is required.
import { showMessage } from './messages.js';

const params = new URLSearchParams(window.location.search);
const iss = params.get('iss');
const launch = params.get('launch');

function under(url, prefix) {
  const u = new URL(url);
  const p = new URL(prefix);
  const path = p.pathname.replace(/\/+$/, '');
  return u.origin === p.origin && (u.pathname.replace(/\/+$/, '') === path || u.pathname.startsWith(`${path}/`));
}

try {
  if (!iss) {
    throw Object.assign(new Error('no FHIR server'), { userMessage: 'Open this app from the EHR (or give the FHIR server: launch.html?iss=<FHIR base URL>).' });
  }
  const response = await fetch('api/config', { headers: { Accept: 'application/json' } });
  if (!response.ok) throw new Error(`the service answered HTTP ${response.status}`);
  const config = await response.json();
  if (!config.allowedIss.some((prefix) => under(iss, prefix))) {  // WHATWG URL decides, as fetch will; no allowlist, no launch
    throw Object.assign(new Error('iss not allowed'), { userMessage: `This app is not set up for the FHIR server ${iss}. Ask your EHR administrator.` });
  }
  await FHIR.oauth2.authorize({
    clientId: config.clientId,
    scope: launch ? config.ehrScope : config.standaloneScope,
    redirectUri: 'index.html',
    iss,
    launch: launch || undefined,
    pkceMode: 'required',
  });
} catch (err) {
  showMessage(err.userMessage || `The app could not start: ${err.message}`);
}
