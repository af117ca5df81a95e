// One place that turns a failure into a message a clinician can act on (never a blank page).

export function explain(err) {
  const status = err?.status ?? err?.statusCode ?? err?.response?.status;
  if (err?.userMessage) return err.userMessage;
  if (status === 401) {
    return 'Your access to this patient\'s record has expired or was revoked. Open the app again from the EHR.';
  }
  if (status === 403) return 'The EHR did not allow this app to read this part of the record. Ask your EHR administrator.';
  if (status === 429 || status === 503) return 'The EHR\'s FHIR server is busy. Try again in a minute.';
  const text = String(err?.message || err || '');
  if (/state|No 'code'|session|expired|sessionStorage/i.test(text)) {
    return 'This page is opened by the EHR launch. Open the app again from the EHR.';
  }
  if (/fetch|network/i.test(text)) return 'The EHR\'s FHIR server or the trial service could not be reached. Try again.';
  return `Something went wrong: ${text}`;
}

export function showMessage(message) {
  const app = document.getElementById('app');
  app.dataset.appState = 'error';
  const main = app.querySelector('main') || app;
  main.replaceChildren();
  const h1 = document.createElement('h1');
  h1.textContent = 'trial-cds clinician view';
  const alert = document.createElement('p');
  alert.setAttribute('role', 'alert');
  alert.className = 'alert';
  alert.textContent = message;
  main.append(h1, alert);
}
