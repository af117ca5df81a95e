"""End to end: trials and patients on a real FHIR server (Medplum's engine), the service over HTTP.

- Every synthetic patient's hook answered by fetching from the server (no prefetch, the EHR's
  bearer token on every request) gives the same cards as the committed prefetch hook.
- The service reading its catalogue from the server (TRIAL_CDS_CATALOGUE=<base>) gives the same
  cards as the service reading the local bundles.
- A sixth (test-only, CQL-only) trial added on the server appears after POST /admin/reload; a
  Library whose CQL does not translate is reported and skipped; the other trials keep working.

The module has its own FHIR server that requires a bearer token from start to end (so a request
without it would be refused), and is not reset between tests: the tests run in file order.
Each patient is evaluated once per path (the CQL of five trials is the slow part).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cds.bundles import BASE, CRITERION_SYSTEM, EXT_CQF_EXPRESSION, EXT_CRITERION_TEXT
from cds.catalogue import Catalogue
from cds.paths import BUNDLES_DIR
from cds.publish import Publisher, Source, load_sources
from cds.settings import Settings
from tests.fhirserver import FhirTestServer
from tests.service.conftest import HOOK_PATH, LiveServer, hook_body

HOOKS_DIR = BUNDLES_DIR / "patients" / "hooks"
PATIENTS = sorted(p.stem for p in HOOKS_DIR.glob("*.json"))
TOKEN = "e2e-ehr-token-" + uuid.uuid4().hex
ADMIN = "e2e-admin-" + uuid.uuid4().hex
TRIAL_IDS = {"tongji-cd19-bcma-cart-sle", "zju-children-cd19-cart-sle", "nct07318259", "nct06710717", "nct06350110"}
SIXTH = "test-sixth-trial"
BROKEN = "test-broken-trial"
TIMEOUT = 180.0


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[FhirTestServer]:
    """A FHIR server that refuses every request without TOKEN, holding the catalogue and patients."""
    srv = FhirTestServer(token=TOKEN).start()
    try:
        report = Publisher(srv.base_url, TOKEN).publish(load_sources(BUNDLES_DIR, patients=True))
        assert report.failure is None, report.failure
        yield srv
    finally:
        srv.stop()


def _start(settings: Settings) -> LiveServer:
    from cds.app import create_app

    return LiveServer(create_app(settings)).start()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    s = requests.Session()
    s.trust_env = False
    yield s
    s.close()


@pytest.fixture(scope="module")
def remote(server: FhirTestServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The service with its catalogue read from the FHIR server."""
    settings = Settings(insecure=True, db=tmp_path_factory.mktemp("e2e-remote") / "db.sqlite",
                        catalogue=server.base_url, catalogue_token=TOKEN, fhir_allowlist=[server.base_url],
                        admin_token=ADMIN, cql_timeout=120.0, fetch_timeout=30.0, hook_budget=120.0)
    live = _start(settings)
    try:
        yield live
    finally:
        live.stop()


def _post(http: requests.Session, live: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = http.post(live.base_url + HOOK_PATH, json=body, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()["cards"]


def _committed_hook(name: str) -> dict[str, Any]:
    return json.loads((HOOKS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def essence(cards: list[dict[str, Any]]) -> list[tuple[str, str, str, Any]]:
    """What must agree between two answers: per card, trial, verdict, summary, criteria (with evidence)."""
    out = []
    for c in cards:
        ext = c["extension"]["trial-cds"]
        out.append((ext["researchStudy"], ext["verdict"], c["summary"], ext["criteria"]))
    return out


@pytest.fixture(scope="module")
def by_prefetch(http: requests.Session, remote: LiveServer) -> dict[str, list[dict[str, Any]]]:
    return {name: _post(http, remote, _committed_hook(name)) for name in PATIENTS}


@pytest.fixture(scope="module")
def by_fetch(http: requests.Session, remote: LiveServer, server: FhirTestServer) -> dict[str, list[dict[str, Any]]]:
    return {name: _post(http, remote, hook_body(name, fhir_server=server.base_url, token=TOKEN)) for name in PATIENTS}


@pytest.fixture(scope="module")
def by_local_catalogue(http: requests.Session, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The same committed hooks, answered by a service reading the local bundles (stopped afterwards)."""
    settings = Settings(insecure=True, db=tmp_path_factory.mktemp("e2e-local") / "db.sqlite", cql_timeout=120.0)
    live = _start(settings)
    try:
        return {name: _post(http, live, _committed_hook(name)) for name in PATIENTS}
    finally:
        live.stop()


# -- the catalogue from the server ----------------------------------------------------------------

def test_catalogue_from_the_server_equals_the_local_bundles(remote: LiveServer) -> None:
    state = remote.app.state.cds
    local = Catalogue.from_directory(BUNDLES_DIR)
    assert state.catalogue.problems == []
    assert state.catalogue.trials == local.trials
    assert state.catalogue.libraries == local.libraries
    assert state.screen_library == "SLEScreen"
    # The value sets, read back by canonical URL, are the committed ones, code for code.
    assert {u: (v.version, v.codes) for u, v in state.catalogue.value_sets.items()} == \
        {u: (v.version, v.codes) for u, v in local.value_sets.items()}


def test_the_catalogue_was_read_with_the_catalogue_token(server: FhirTestServer) -> None:
    reqs = server.requests()
    assert any(r["path"].startswith("/ResearchStudy?status=active") for r in reqs)
    assert any(r["path"].startswith("/Library?url=") for r in reqs)


def test_discovery_from_the_server_catalogue_matches_the_committed_prefetch(http: requests.Session,
                                                                            remote: LiveServer) -> None:
    doc = http.get(remote.base_url + "/cds-services", timeout=30).json()
    prefetch = doc["services"][0]["prefetch"]
    assert set(_committed_hook(PATIENTS[0])["prefetch"]) == set(prefetch)


# -- fetch vs prefetch vs local catalogue ---------------------------------------------------------

def test_every_patient_gets_the_same_cards_by_fetch_as_by_prefetch(by_prefetch: dict[str, Any],
                                                                   by_fetch: dict[str, Any]) -> None:
    assert len(by_prefetch) == len(PATIENTS) >= 20
    assert any(by_prefetch.values()), "no patient got a card: the comparison would prove nothing"
    for name in PATIENTS:
        assert essence(by_fetch[name]) == essence(by_prefetch[name]), name


def test_the_fhir_server_saw_the_bearer_token_on_every_request(server: FhirTestServer, by_fetch: dict[str, Any]) -> None:
    reqs = server.requests()
    assert reqs
    missing = [r for r in reqs if r["authorization"] != f"Bearer {TOKEN}"]
    assert missing == []
    fetched = {r["path"] for r in reqs if r["method"] == "GET"}
    for name in PATIENTS:
        assert any(f"patient={name}" in p or p.startswith(f"/Patient/{name}") for p in fetched), name


def test_the_server_catalogue_gives_the_same_cards_as_the_local_bundles(by_prefetch: dict[str, Any],
                                                                       by_local_catalogue: dict[str, Any]) -> None:
    for name in PATIENTS:
        assert essence(by_prefetch[name]) == essence(by_local_catalogue[name]), name


# -- reload: a sixth trial, a broken one ------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def trial_resources(study_id: str, cql: str, criteria: list[tuple[str, str, str, bool]]) -> list[dict[str, Any]]:
    """Library (CQL only), eligibility Group and ResearchStudy of a test-only trial."""
    lib_url = f"{BASE}/Library/{study_id}-rules"
    library = {
        "resourceType": "Library", "id": f"{study_id}-rules", "url": lib_url, "version": "1.0.0",
        "name": study_id.replace("-", "_"), "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]},
        "relatedArtifact": [{"type": "depends-on", "resource": f"{BASE}/Library/FHIRHelpers"},
                            {"type": "depends-on", "resource": f"{BASE}/Library/SLECommon"}],
        "content": [{"contentType": "text/cql", "data": _b64(cql)}],
    }
    group = {
        "resourceType": "Group", "id": f"{study_id}-eligibility", "type": "person", "actual": False,
        "characteristic": [{
            "extension": [
                {"url": EXT_CQF_EXPRESSION, "valueExpression": {"language": "text/cql.identifier", "expression": define,
                                                                "reference": lib_url}},
                {"url": EXT_CRITERION_TEXT, "valueString": text},
            ],
            "code": {"coding": [{"system": CRITERION_SYSTEM, "code": cid}], "text": text},
            "valueBoolean": True,
            "exclude": exclude,
        } for cid, define, text, exclude in criteria],
    }
    study = {
        "resourceType": "ResearchStudy", "id": study_id, "status": "active", "title": f"Test-only trial {study_id}",
        "enrollment": [{"reference": f"Group/{study_id}-eligibility"}],
    }
    return [library, group, study]


SIXTH_CQL = """library "test_sixth_trial" version '1.0.0'

using FHIR version '4.0.1'

include FHIRHelpers version '4.0.1'
include SLECommon version '1.0.0' called SLE

context Patient

define "I1 Age 18 or older":
  SLE."Age Criterion"(18, null)

define "I2 SLE diagnosis":
  SLE."SLE Diagnosis"
"""

BROKEN_CQL = """library "test_broken_trial" version '1.0.0'

using FHIR version '4.0.1'

context Patient

define "I1 Broken": this is not CQL at all (
"""


def _reload(http: requests.Session, live: LiveServer, token: str | None = ADMIN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http.post(live.base_url + "/admin/reload", headers=headers, timeout=TIMEOUT)


def test_reload_needs_the_admin_token(http: requests.Session, remote: LiveServer) -> None:
    assert _reload(http, remote, token=None).status_code == 401
    assert _reload(http, remote, token="wrong").status_code == 401


def test_a_failing_reload_keeps_the_current_catalogue(http: requests.Session, remote: LiveServer,
                                                      server: FhirTestServer) -> None:
    server.fail_next(1, status=500, retry_after=None)  # the ResearchStudy search
    resp = _reload(http, remote)
    assert resp.status_code == 503, resp.text
    assert "previous catalogue stays in use" in resp.json()["error"]
    assert {t.id for t in remote.app.state.cds.catalogue.trials} == TRIAL_IDS
    ready = http.get(remote.base_url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["trials"] == 5
    assert ready.json()["terminology"] == {"source": "committed expansions"}


def test_a_sixth_trial_appears_after_reload_and_a_broken_one_is_reported(
        http: requests.Session, remote: LiveServer, server: FhirTestServer, by_prefetch: dict[str, Any]) -> None:
    sixth = trial_resources(SIXTH, SIXTH_CQL, [("I1", "I1 Age 18 or older", "Aged 18 or older", False),
                                         ("I2", "I2 SLE diagnosis", "Diagnosed with SLE", False)])
    broken = trial_resources(BROKEN, BROKEN_CQL, [("I1", "I1 Broken", "Cannot be evaluated", False)])
    report = Publisher(server.base_url, TOKEN).publish([Source("sixth", sixth), Source("broken", broken)])
    assert report.failure is None, report.failure
    old_engine = remote.app.state.cds.engine

    resp = _reload(http, remote)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert set(doc["trials"]) == TRIAL_IDS | {SIXTH}
    assert any(f"Library/{BROKEN}-rules" in p and "does not translate" in p for p in doc["problems"]), doc["problems"]
    assert any(f"ResearchStudy/{BROKEN}" in p for p in doc["problems"]), doc["problems"]
    state = remote.app.state.cds
    assert state.engine is not old_engine and not old_engine.pool.ready
    assert "test_sixth_trial" in state.catalogue.libraries

    cards = _post(http, remote, _committed_hook("adult-likely"))
    mine = [c for c in cards if c["extension"]["trial-cds"]["researchStudy"] == SIXTH]
    assert len(mine) == 1, [c["summary"] for c in cards]
    ext = mine[0]["extension"]["trial-cds"]
    assert ext["verdict"] == "likely-eligible"
    assert [(c["id"], c["status"]) for c in ext["criteria"]] == [("I1", "met"), ("I2", "met")]
    # the five real trials answer as before the reload
    assert essence([c for c in cards if c is not mine[0]]) == essence(by_prefetch["adult-likely"])
    # a patient without SLE is still screened out
    assert _post(http, remote, _committed_hook("no-sle")) == []


# -- a site adds its local codes: a new version of a ValueSet, picked up by a reload -------------------

LOCAL_DX = "http://hospital.example.org/diagnoses"


def _with_local_cancer(hook: dict[str, Any]) -> dict[str, Any]:
    """The adult-likely hook with a breast cancer coded only in the hospital's own code system."""
    hook = json.loads(json.dumps(hook))
    conditions = hook["prefetch"]["condition"]
    conditions.setdefault("entry", []).append({"resource": {
        "resourceType": "Condition", "id": "adult-likely-local-ca",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": LOCAL_DX, "code": "ONC-117", "display": "Mammakarzinom links"}]},
        "subject": {"reference": "Patient/adult-likely"}, "onsetDateTime": "2026-10-01"}})
    return hook


def _card(cards: list[dict[str, Any]], trial: str) -> dict[str, Any] | None:
    return next((c for c in cards if c["extension"]["trial-cds"]["researchStudy"] == trial), None)


def test_a_new_value_set_version_with_a_local_code_is_picked_up_by_a_reload(
        http: requests.Session, remote: LiveServer, server: FhirTestServer) -> None:
    hook = _with_local_cancer(_committed_hook("adult-likely"))
    before = _card(_post(http, remote, hook), "nct07318259")
    assert before is not None and before["extension"]["trial-cds"]["verdict"] == "possibly-eligible"
    e10 = next(c for c in before["extension"]["trial-cds"]["criteria"] if c["id"] == "002-E10")
    assert e10["status"] == "unknown" and any("could not be classified" in (e["note"] or "") for e in e10["evidence"])

    committed = next(vs for vs in Catalogue.from_directory(BUNDLES_DIR).value_sets.values() if vs.url.endswith("/malignancy"))
    site = json.loads(json.dumps(committed.resource))
    site.update(id="malignancy-site-1-0-1", version="1.0.1")
    site["compose"]["include"].append({"system": LOCAL_DX, "concept": [{"code": "ONC-117", "display": "Mammakarzinom links"}]})
    site["expansion"]["contains"].append({"system": LOCAL_DX, "code": "ONC-117", "display": "Mammakarzinom links"})
    site["expansion"]["total"] += 1
    report = Publisher(server.base_url, TOKEN).publish([Source("site-value-set", [site])])
    assert report.failure is None, report.failure

    assert _reload(http, remote).status_code == 200
    state = remote.app.state.cds
    assert state.catalogue.value_sets[committed.url].version == "1.0.1"
    after = _post(http, remote, hook)
    assert _card(after, "nct07318259") is None  # 002-E10 met: excluded, no card
    assert _card(after, "nct06710717") is None  # 003-E1 active cancer: excluded
