"""The clinician view in headless Chromium: EHR launch from the card for every committed patient,
standalone launch, expired and revoked tokens, orders, the printable referral, keyboard and axe-core.

Each EHR launch is the whole chain: the service's card (a real patient-view hook) -> the clinician
clicks its `smart` link -> the EHR makes a launch context -> launch.html -> authorize (oidc-provider)
-> token (patient, appContext) -> the app reads the record from the FHIR server with its own token
-> the service evaluates it (id_token checked) -> the rendered checklist. Its statuses must equal
`trial-cds evaluate`'s for the same record at the same instant.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import requests

from cds.catalogue import Catalogue
from cds.eligibility import TrialResult, evaluate_trials
from cds.engine import Engine
from cds.paths import BUNDLES_DIR, PATIENTS_DIR, ROOT

from .conftest import CLIENT_ID, PATIENTS, SHOTS, Stack

pytestmark = pytest.mark.browser
LAUNCHES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.from_directory(BUNDLES_DIR)


@pytest.fixture(scope="module")
def engine(catalogue: Catalogue) -> Iterator[Engine]:
    with Engine(catalogue.libraries, pool_size=1) as e:
        yield e


def expected(engine: Engine, catalogue: Catalogue, name: str, at: str) -> dict[str, TrialResult]:
    """What `trial-cds evaluate fhir_bundles/patients/<name>.json --at <at> --json` computes (its own
    function, on one engine; test_cli_equals_the_app runs the command itself once)."""
    doc = json.loads((PATIENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    when = datetime.fromisoformat(at)
    return {r.researchStudy: r for r in evaluate_trials(engine, catalogue, doc, when)}


def statuses(trial: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in trial["criteria"]}


@pytest.mark.parametrize("name", PATIENTS)
def test_ehr_launch_from_the_card_shows_the_checklist(stack: Stack, engine: Engine, catalogue: Catalogue,
                                                      name: str) -> None:
    state = stack.ehr_launch(name)
    LAUNCHES[name] = state
    assert state["state"] == "ready", state.get("message")
    assert state["patient"] == name
    assert state["url"].startswith(f"{stack.service.base_url}/app/index.html")
    want = expected(engine, catalogue, name, state["evaluatedAt"])
    got = {t["id"]: t for t in state["trials"]}
    assert set(got) == set(want), "every trial of the catalogue is on the checklist"
    for trial_id, result in want.items():
        assert got[trial_id]["verdict"] == result.verdict, trial_id
        assert statuses(got[trial_id]) == {c.id: c.status for c in result.criteria}, trial_id
        texts = {c["id"]: c["text"] for c in got[trial_id]["criteria"]}
        full = {c.id: c.text for c in catalogue.trial(trial_id).criteria}
        assert all(texts[k] == full[k] for k in full), "the seed's full text, never cut"
        for c in got[trial_id]["criteria"]:
            assert c["type"] in ("inclusion", "exclusion", "review")
    cards = state["cards"]
    smart = [link for link in cards[0].get("links", []) if link["type"] == "smart"]
    assert smart and smart[0]["url"] == stack.app_launch
    if cards[0].get("extension"):  # launched from a trial's card: that trial is the focus
        focus = cards[0]["extension"]["trial-cds"]["researchStudy"]
        assert smart[0]["appContext"] == cards[0]["uuid"] and name not in smart[0]["appContext"]
        assert [t["id"] for t in state["trials"] if t["focused"]] == [focus]
    else:
        assert not any(t["focused"] for t in state["trials"])
    assert (SHOTS / f"{name}.png").stat().st_size > 10_000


def test_cli_equals_the_app(stack: Stack) -> None:
    """`trial-cds evaluate` itself (the command line) agrees with the app for one launch."""
    state = LAUNCHES.get("adult-missing-serology") or stack.ehr_launch("adult-missing-serology")
    out = subprocess.run([sys.executable, "-m", "cds.cli", "evaluate", str(PATIENTS_DIR / "adult-missing-serology.json"),
                          "--at", state["evaluatedAt"], "--json"], check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    cli = {r["researchStudy"]: r for r in json.loads(out.stdout)}
    app = {t["id"]: t for t in state["trials"]}
    assert {k: (v["verdict"], {c["id"]: c["status"] for c in v["criteria"]}) for k, v in cli.items()} == \
           {k: (v["verdict"], statuses(v)) for k, v in app.items()}


def test_timelines_draw_the_trials_threshold(stack: Stack) -> None:
    state = LAUNCHES.get("adult-likely") or stack.ehr_launch("adult-likely")
    lines = {t["code"]: t for trial in state["trials"] for t in trial["timelines"]}
    assert {"SLEDAI-2K", "eGFR"} <= set(lines), lines
    assert all(t["points"] >= 1 and t["threshold"] >= 1 for t in lines.values() if t["code"] == "SLEDAI-2K")


def test_missing_tests_are_listed_and_orders_can_be_proposed(stack: Stack) -> None:
    state = stack.ehr_launch("adult-missing-serology", shot="orders-before")
    trial = next(t for t in state["trials"] if t["id"] == "nct07318259")
    assert {"HBsAg", "HCV antibody"} <= set(trial["missing"])
    before = {r["id"] for r in stack.fhir.all_resources("ServiceRequest")}
    done = stack.browser.call("click", selector='[data-trial="nct07318259"] button[data-action="propose"]',
                              waitFor='[data-trial="nct07318259"] .order-status[data-proposed]',
                              screenshot=str(SHOTS / "orders-proposed.png"))
    assert done["state"] == "ready"
    made = [r for r in stack.fhir.all_resources("ServiceRequest") if r["id"] not in before]
    assert len(made) == len(trial["missing"]) or len(made) >= 5
    for sr in made:
        assert (sr["status"], sr["intent"]) == ("draft", "proposal")
        assert sr["subject"]["reference"] == "Patient/adult-missing-serology"
    writes = [r for r in stack.fhir.requests() if r["method"] == "POST" and r["path"].startswith("/ServiceRequest")]
    assert writes and all(r["authorization"] and "loader" not in r["authorization"] for r in writes), \
        "written with the app's own SMART token"


def test_printable_referral_summary(stack: Stack) -> None:
    stack.ehr_launch("adult-likely", shot="referral-screen")
    text = stack.browser.call("evaluate", expression="document.getElementById('referral').innerText")
    assert "Referral for clinical trial screening" in text and "Criteria the record shows as met" in text
    pdf = stack.browser.call("print_pdf", path=str(SHOTS / "referral.pdf"))
    assert pdf["bytes"] > 5_000


def test_standalone_launch_with_a_patient_picker(stack: Stack) -> None:
    picker = stack.browser.call("open", url=f"{stack.app_launch}?iss={stack.fhir.base_url}",
                                screenshot=str(SHOTS / "standalone-picker.png"))
    assert picker["state"] == "pick"
    state = stack.browser.call("pick_patient", patient="fits-004", screenshot=str(SHOTS / "standalone.png"))
    assert state["state"] == "ready" and state["patient"] == "fits-004"
    assert next(t for t in state["trials"] if t["id"] == "nct06350110")["verdict"] in ("likely-eligible", "possibly-eligible")
    assert not any(t["focused"] for t in state["trials"]), "no card, no focus"


@pytest.mark.parametrize("how", ["expired", "revoked"])
def test_an_expired_or_revoked_token_gets_a_clear_message(stack: Stack, how: str) -> None:
    state = stack.ehr_launch("fits-002", shot=f"before-{how}")
    assert state["state"] == "ready"
    token = stack.session_token()
    if how == "expired":
        assert stack.fhir.expire(token)
    else:
        stack.fhir.revoke(token, CLIENT_ID)
    again = stack.browser.call("reload", screenshot=str(SHOTS / f"token-{how}.png"))
    assert again["state"] == "error"
    assert "expired or was revoked" in again["message"] and "from the EHR" in again["message"]


def test_launch_without_a_fhir_server_or_from_an_unknown_one(stack: Stack) -> None:
    bare = stack.browser.call("open", url=stack.app_launch, screenshot=str(SHOTS / "no-iss.png"))
    assert bare["state"] == "error" and "Open this app from the EHR" in bare["message"]
    other = stack.browser.call("open", url=f"{stack.app_launch}?iss=https://elsewhere.example/fhir&launch=x")
    assert other["state"] == "error" and "not set up for the FHIR server" in other["message"]
    stray = stack.browser.call("open", url=f"{stack.service.base_url}/app/index.html")
    assert stray["state"] == "error" and "from the EHR" in stray["message"]


def test_accessibility_no_serious_or_critical_violation(stack: Stack) -> None:
    pages = {}
    stack.ehr_launch("stale-labs", shot="axe-checklist")
    pages["checklist"] = stack.browser.call("axe")
    stack.browser.call("open", url=f"{stack.app_launch}?iss={stack.fhir.base_url}")
    pages["picker"] = stack.browser.call("axe")
    stack.browser.call("open", url=stack.app_launch)
    pages["error"] = stack.browser.call("axe")
    for where, result in pages.items():
        bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert not bad, (where, bad)


def test_keyboard_reaches_everything_with_visible_focus(stack: Stack) -> None:
    stack.ehr_launch("fits-003", shot="keyboard")
    k = stack.browser.call("keyboard")
    assert k["reached"] >= k["interactive"] - 1, k  # the skip link may sit before the body's first stop
    assert k["focusVisible"], k["sample"]
    assert k["toggled"] is True, "Enter opens and closes a section"


def test_the_evaluation_endpoint_wants_an_id_token(stack: Stack) -> None:
    url = f"{stack.service.base_url}/app/api/evaluate"
    body = {"patientId": "adult-likely", "prefetch": {}}
    none = requests.post(url, json=body, timeout=30)
    assert none.status_code == 401 and none.json()["error"] == "authentication failed"
    assert none.json()["correlationId"], "the log explains the refusal under this id"
    forged = requests.post(url, json=body, headers={"Authorization": "Bearer eyJhbGciOiJub25lIn0.e30."}, timeout=30)
    assert forged.status_code == 401
    as_text = requests.post(url, data=json.dumps(body), timeout=30,
                            headers={"Content-Type": "text/plain", "Authorization": "Bearer x"})
    assert as_text.status_code == 401, "authentication comes first"
    cfg = requests.get(f"{stack.service.base_url}/app/api/config", timeout=30).json()
    assert cfg["clientId"] == CLIENT_ID and cfg["allowedIss"] == [stack.fhir.base_url]
    assert all("{{context.patientId}}" in q["template"] for q in cfg["queries"])
    page = requests.get(f"{stack.service.base_url}/app/index.html", timeout=30)
    assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
