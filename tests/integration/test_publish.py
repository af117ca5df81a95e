"""`trial-cds publish` against the test FHIR server (Medplum's engine): loads, idempotency, errors, auth."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from cds.cli import app
from cds.paths import BUNDLES_DIR
from cds.publish import (
    MAX_ENTRIES,
    PublishError,
    bundle_resources,
    chunks,
    same_content,
)
from tests.fhirserver import FhirTestServer

TRIAL_IDS = ["tongji-cd19-bcma-cart-sle", "zju-children-cd19-cart-sle", "nct07318259", "nct06710717", "nct06350110"]
PATIENT_FILES = sorted((BUNDLES_DIR / "patients").glob("*.json"))


def run(*args: str, token_env: str | None = None) -> Any:
    result = CliRunner().invoke(app, ["publish", *args], env={"TRIAL_CDS_PUBLISH_TOKEN": token_env, "COLUMNS": "200"})
    return result


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def expected_resources(patients: bool = True) -> dict[str, dict[str, Any]]:
    files = [BUNDLES_DIR / "catalogue.json", *(PATIENT_FILES if patients else [])]
    return {f"{r['resourceType']}/{r['id']}": r for f in files for r in bundle_resources(load(f), f.name)}


def types_of(keys: Any) -> list[str]:
    return sorted({k.split("/")[0] for k in keys})


@pytest.fixture
def bundles_copy(tmp_path: Path) -> Path:
    """A writable copy of the catalogue and patient bundles."""
    target = tmp_path / "bundles"
    (target / "patients").mkdir(parents=True)
    shutil.copy(BUNDLES_DIR / "catalogue.json", target / "catalogue.json")
    for f in PATIENT_FILES:
        shutil.copy(f, target / "patients" / f.name)
    for t in TRIAL_IDS:
        shutil.copy(BUNDLES_DIR / f"{t}.json", target / f"{t}.json")
    return target


def test_every_trial_and_patient_loads(fhir_server: FhirTestServer) -> None:
    assert PATIENT_FILES, "no synthetic patients found"
    result = run(fhir_server.base_url, "--patients")
    assert result.exit_code == 0, result.output
    expected = expected_resources()
    on_server = {f"{r['resourceType']}/{r['id']}": r for t in types_of(expected) for r in fhir_server.all_resources(t)}
    assert set(on_server) == set(expected)
    for key, ours in expected.items():
        assert same_content(ours, on_server[key]), key
    assert {k.split("/")[1] for k in on_server if k.startswith("ResearchStudy/")} == set(TRIAL_IDS)
    assert {k.split("/")[1] for k in on_server if k.startswith("Patient/")} == {p.stem for p in PATIENT_FILES}
    assert "total" in result.output and str(len(expected)) in result.output
    # the catalogue's references resolve on the server
    for tid in TRIAL_IDS:
        study = on_server[f"ResearchStudy/{tid}"]
        assert study["enrollment"][0]["reference"] in on_server
    # a patient's record can be searched the way the service searches it
    first = PATIENT_FILES[0].stem
    r = requests.get(f"{fhir_server.base_url}/Observation?patient={first}&_count=1000", timeout=10).json()
    assert r["total"] == sum(1 for k, v in expected.items()
                             if k.startswith("Observation/") and v["subject"]["reference"] == f"Patient/{first}")


def test_each_trial_bundle_loads_alone(fhir_server: FhirTestServer) -> None:
    for tid in TRIAL_IDS:
        fhir_server.reset()
        result = run(fhir_server.base_url, "--trial", tid)
        assert result.exit_code == 0, result.output
        expected = {f"{r['resourceType']}/{r['id']}" for r in bundle_resources(load(BUNDLES_DIR / f"{tid}.json"), tid)}
        assert set(fhir_server.snapshot(types_of(expected))) == expected


def test_publishing_twice_changes_nothing(fhir_server: FhirTestServer) -> None:
    assert run(fhir_server.base_url, "--patients").exit_code == 0
    types = types_of(expected_resources())
    before = fhir_server.snapshot(types)
    log_before = len(fhir_server.requests())
    again = run(fhir_server.base_url, "--patients")
    assert again.exit_code == 0, again.output
    second_run = fhir_server.requests()[log_before:]
    assert fhir_server.snapshot(types) == before  # same ids, no duplicates, no version bumped
    assert "nothing to write" in again.output
    # only batch reads: ceil(n / 50) POSTs to the base, nothing else
    assert {(r["method"], r["path"]) for r in second_run} == {("POST", "")}
    assert len(second_run) == -(-len(before) // MAX_ENTRIES)


def test_trial_then_catalogue_reports_unchanged(fhir_server: FhirTestServer) -> None:
    assert run(fhir_server.base_url, "--trial", "nct06350110").exit_code == 0
    before = fhir_server.snapshot(["Library", "Organization", "Group", "ResearchStudy"])
    result = run(fhir_server.base_url, "--verbose")
    assert result.exit_code == 0, result.output
    after = fhir_server.snapshot(["Library", "Organization", "Group", "ResearchStudy"])
    assert all(after[k] == v for k, v in before.items())
    assert "unchanged: ResearchStudy/nct06350110" in result.output
    assert "created: ResearchStudy/nct06710717" in result.output


def test_a_changed_resource_is_updated_and_only_it(fhir_server: FhirTestServer, bundles_copy: Path) -> None:
    assert run(fhir_server.base_url, "--bundles", str(bundles_copy)).exit_code == 0
    types = ["Library", "Organization", "Location", "Group", "ResearchStudy"]
    before = fhir_server.snapshot(types)
    cat = load(bundles_copy / "catalogue.json")
    study = next(e["resource"] for e in cat["entry"] if e["resource"]["id"] == "nct06350110")
    study["title"] = study["title"] + " (amended)"
    (bundles_copy / "catalogue.json").write_text(json.dumps(cat), encoding="utf-8")
    result = run(fhir_server.base_url, "--bundles", str(bundles_copy), "--verbose")
    assert result.exit_code == 0, result.output
    assert "updated: ResearchStudy/nct06350110" in result.output
    after = fhir_server.snapshot(types)
    assert [k for k in before if before[k] != after[k]] == ["ResearchStudy/nct06350110"]
    got = requests.get(f"{fhir_server.base_url}/ResearchStudy/nct06350110", timeout=10).json()
    assert got["title"].endswith("(amended)")


def test_server_rejection_is_shown_per_entry_and_rolled_back(fhir_server: FhirTestServer, bundles_copy: Path) -> None:
    assert run(fhir_server.base_url, "--bundles", str(bundles_copy)).exit_code == 0
    types = ["Library", "Organization", "Location", "Group", "ResearchStudy"]
    before = fhir_server.snapshot(types)
    trial = load(bundles_copy / "nct06350110.json")
    for e in trial["entry"]:
        if e["resource"]["resourceType"] == "ResearchStudy":
            e["resource"]["title"] = "changed, must not stick"
        if e["resource"]["resourceType"] == "Group":
            del e["resource"]["type"]  # Group.type is required
            e["resource"]["actual"] = "no"  # and a boolean
    (bundles_copy / "nct06350110.json").write_text(json.dumps(trial), encoding="utf-8")
    result = run(fhir_server.base_url, "--bundles", str(bundles_copy), "--trial", "nct06350110")
    assert result.exit_code == 1, result.output
    assert "transaction 1 failed (HTTP 400)" in result.output
    assert "Group/nct06350110-eligibility: " in result.output
    assert "Group.type" in result.output and "Group.actual" in result.output
    assert fhir_server.snapshot(types) == before
    got = requests.get(f"{fhir_server.base_url}/ResearchStudy/nct06350110", timeout=10).json()
    assert got["title"] != "changed, must not stick"


@pytest.mark.parametrize("break_it, message", [
    (lambda b: b["entry"][0]["request"].update(url="Library/other"), "request must be PUT Library/FHIRHelpers"),
    (lambda b: b["entry"][1]["resource"].pop("id"), "needs a stable, valid id"),
    (lambda b: b["entry"].append(b["entry"][0]), "appears twice"),
    (lambda b: b.update(type="searchset"), "Bundle.type is 'searchset'"),
    (lambda b: b["entry"][2].pop("resource"), "has no resource"),
])
def test_malformed_bundle_is_refused_before_anything_is_sent(fhir_server: FhirTestServer, bundles_copy: Path,
                                                             break_it: Any, message: str) -> None:
    cat = load(bundles_copy / "catalogue.json")
    break_it(cat)
    (bundles_copy / "catalogue.json").write_text(json.dumps(cat), encoding="utf-8")
    result = run(fhir_server.base_url, "--bundles", str(bundles_copy), "--patients")
    assert result.exit_code == 2, result.output
    assert "cannot publish" in result.output and message in result.output
    assert fhir_server.requests() == []


def test_not_json_and_unknown_trial(fhir_server: FhirTestServer, bundles_copy: Path) -> None:
    (bundles_copy / "patients" / "broken.json").write_text("{oops", encoding="utf-8")
    result = run(fhir_server.base_url, "--bundles", str(bundles_copy), "--patients")
    assert result.exit_code == 2 and "broken.json: not readable JSON" in result.output
    result = run(fhir_server.base_url, "--bundles", str(bundles_copy), "--trial", "nope")
    assert result.exit_code == 2 and "no bundle for trial 'nope'" in result.output
    assert fhir_server.requests() == []


def test_dry_run_writes_nothing(fhir_server: FhirTestServer, bundles_copy: Path) -> None:
    result = run(fhir_server.base_url, "--patients", "--dry-run")
    assert result.exit_code == 0, result.output
    n = len(expected_resources())
    assert "DRY RUN" in result.output and "would be created: Patient/" in result.output
    assert {(r["method"], r["path"]) for r in fhir_server.requests()} == {("POST", "")}  # batch reads only
    assert len(fhir_server.requests()) == -(-n // MAX_ENTRIES)
    assert all(not fhir_server.all_resources(t) for t in types_of(expected_resources()))
    # after a real publish, a dry run of a change reports it and still writes nothing
    assert run(fhir_server.base_url, "--bundles", str(bundles_copy)).exit_code == 0
    before = fhir_server.snapshot(["ResearchStudy", "Group", "Library"])
    cat = load(bundles_copy / "catalogue.json")
    next(e for e in cat["entry"] if e["resource"]["resourceType"] == "ResearchStudy")["resource"]["title"] = "new"
    (bundles_copy / "catalogue.json").write_text(json.dumps(cat), encoding="utf-8")
    result = run(fhir_server.base_url, "--bundles", str(bundles_copy), "--dry-run")
    assert result.exit_code == 0 and "would be updated: ResearchStudy/" in result.output
    assert fhir_server.snapshot(["ResearchStudy", "Group", "Library"]) == before


def test_token_is_sent(fhir_server: FhirTestServer) -> None:
    fhir_server.reset(token="pub-token")
    refused = run(fhir_server.base_url)
    assert refused.exit_code == 1 and "HTTP 401" in refused.output and "--token" in refused.output
    assert run(fhir_server.base_url, "--token", "pub-token").exit_code == 0
    fhir_server.reset(token="env-token")
    ok = run(fhir_server.base_url, "--patients", token_env="env-token")
    assert ok.exit_code == 0, ok.output
    log = fhir_server.requests()
    assert log and all(r["authorization"] == "Bearer env-token" for r in log)
    assert "env-token" not in ok.output


@pytest.mark.parametrize("status", [503, 429])
def test_busy_server_is_retried(fhir_server: FhirTestServer, status: int) -> None:
    fhir_server.fail_next(2, status=status, retry_after="0")
    result = run(fhir_server.base_url)
    assert result.exit_code == 0, result.output
    assert "2 retried request(s)" in result.output
    assert len(fhir_server.all_resources("ResearchStudy")) == 5


def test_transactions_are_bounded_and_ordered() -> None:
    sources = [[{"id": f"{s}-{i}"} for i in range(n)] for s, n in enumerate([27, 48, 14, 120, 3])]
    out = list(chunks(sources))
    assert all(0 < len(c) <= MAX_ENTRIES for c in out)
    assert [r["id"] for c in out for r in c] == [r["id"] for s in sources for r in s]
    assert [len(c) for c in out] == [27, 48, 14, 50, 50, 23]  # a source that fits is never split


def test_collection_bundle_becomes_puts_with_references_rewritten() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0a0a0a0a-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "id": "p"}},
        {"resource": {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:0a0a0a0a-0000-4000-8000-000000000001"}}},
    ]}
    res = bundle_resources(bundle, "t")
    assert res[1]["subject"]["reference"] == "Patient/p"
    with pytest.raises(PublishError, match="needs a stable"):
        bundle_resources({"resourceType": "Bundle", "type": "collection",
                          "entry": [{"resource": {"resourceType": "Patient"}}]}, "t")


def test_patient_bundles_fit_the_server_limits() -> None:
    """The synthetic data is sized for the test server (a scan per search): keep it small."""
    counts = Counter(len(load(f)["entry"]) for f in PATIENT_FILES)
    assert max(counts) <= MAX_ENTRIES
    assert sum(n * c for n, c in counts.items()) < 3000
