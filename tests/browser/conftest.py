"""The browser tests' world, started once per session: an EHR and its FHIR server, the service, Chromium.

- the test FHIR server with SMART on (`--smart`: oidc-provider at /oauth, a bearer token on every
  FHIR call), the trial-cds app registered as public client `trial-cds`, every committed synthetic
  patient published to it (`trial-cds publish`'s Publisher, with the loader's own token);
- the service (uvicorn in a thread, real HTTP) in insecure hook mode (the tests fire hooks without a
  JWT) but with the clinician view secured: TRIAL_CDS_SMART_ISSUERS = that FHIR server's authorization
  server, so the app's evaluations need a valid id_token; TRIAL_CDS_FHIR_ALLOWLIST = its FHIR base;
- one headless Chromium (tests/browser/driver.mjs, playwright-core over Debian's chromium), which
  also plays the EHR's card list and launch.
Screenshots go to test-artefacts/browser/ (gitignored).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from cds.app import SERVICE_ID, create_app
from cds.paths import PATIENTS_DIR
from cds.publish import Publisher, read_bundle
from cds.settings import Settings
from tests.fhirserver import FhirTestServer
from tests.service.conftest import LiveServer, free_port

from .driver import ARTEFACTS, Browser

CLIENT_ID = "trial-cds"
LOADER = "loader-secret-for-tests"
PATIENTS = sorted(p.stem for p in PATIENTS_DIR.glob("*.json") if not p.stem.startswith("random-"))
SHOTS = ARTEFACTS / "browser"


@dataclass
class Stack:
    fhir: FhirTestServer
    service: LiveServer
    browser: Browser

    @property
    def app_launch(self) -> str:
        return f"{self.service.base_url}/app/launch.html"

    def hook(self, name: str) -> list[dict[str, Any]]:
        """The EHR's patient-view call for a committed patient (its prefetch), answered by the service."""
        body = json.loads((PATIENTS_DIR / "hooks" / f"{name}.json").read_text(encoding="utf-8"))
        r = requests.post(f"{self.service.base_url}/cds-services/{SERVICE_ID}", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return list(r.json()["cards"])

    def launch_cards(self, name: str) -> tuple[list[dict[str, Any]], int]:
        """The cards the EHR shows and the one whose smart link the clinician clicks; a patient without
        cards gets the EHR's own app-menu entry (a smart link without appContext)."""
        cards = self.hook(name)
        if cards:
            return cards, 0
        menu = {"summary": "Apps: trial-cds clinician view", "detail": "", "source": {"label": "EHR app menu"},
                "links": [{"label": "Open trial-cds", "url": self.app_launch, "type": "smart"}]}
        return [menu], 0

    def ehr_launch(self, name: str, shot: str | None = None) -> dict[str, Any]:
        cards, index = self.launch_cards(name)
        state = self.browser.call("ehr_launch", cards=cards, card=index, fhirBase=self.fhir.base_url,
                                  fhirRoot=self.fhir.root_url, patient=name,
                                  screenshot=str(SHOTS / f"{shot or name}.png"))
        state["cards"] = cards
        return dict(state)

    def session_token(self) -> str:
        """The access token fhirclient keeps in the page's sessionStorage (to expire or revoke it)."""
        return str(self.browser.call("evaluate", expression=(
            "(() => { const k = sessionStorage.getItem('SMART_KEY');"
            " return JSON.parse(sessionStorage.getItem(JSON.parse(k))).tokenResponse.access_token; })()")))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    fhir = FhirTestServer(token=LOADER, smart=True,
                          smart_clients={CLIENT_ID: f"http://127.0.0.1:{port}/app/index.html"}).start()
    live: LiveServer | None = None
    browser: Browser | None = None
    saved = {k: os.environ.get(k) for k in ("TRIAL_CDS_SMART_ISSUERS", "TRIAL_CDS_SMART_CLIENT_ID")}
    try:
        Publisher(fhir.base_url, token=LOADER).publish([read_bundle(PATIENTS_DIR / f"{n}.json") for n in PATIENTS])
        os.environ["TRIAL_CDS_SMART_ISSUERS"] = fhir.issuer
        os.environ["TRIAL_CDS_SMART_CLIENT_ID"] = CLIENT_ID
        settings = Settings(insecure=True, host="127.0.0.1", port=port, fhir_allowlist=[fhir.base_url],
                            db=tmp_path_factory.mktemp("browser") / "trial-cds.sqlite", pool_size=2)
        live = LiveServer(create_app(settings), port=port).start()
        browser = Browser().start()
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield Stack(fhir=fhir, service=live, browser=browser)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if browser is not None:
            browser.stop()
        if live is not None:
            live.stop()
        fhir.stop()
