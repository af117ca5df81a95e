"""The synthetic patients in fhir_bundles/patients/: current, deterministic, valid FHIR.

Verdicts on these patients are checked in tests/trials/test_verdicts.py (they need the engine).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cds.bundles import validate
from cds.fhir.systems import BASE
from cds.hooks.models import HookRequest
from cds.hooks.prefetch import prefetch_templates
from cds.paths import BUNDLES_DIR, PATIENTS_DIR
from cds.synthetic import patients as P
from tests.conftest import EVAL_AT


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the generator writes now for the fixed evaluation date."""
    out = tmp_path_factory.mktemp("patients")
    P.write(out, EVAL_AT)
    return out


@pytest.fixture(scope="module")
def bundles() -> dict[str, dict[str, Any]]:
    return P.generate(EVAL_AT)


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and not p.name.startswith("random-")}


def test_committed_output_is_what_the_generator_writes(generated: Path) -> None:
    """Regenerate with: python -m cds.synthetic.patients --at 2026-11-26T09:00:00Z --out fhir_bundles/patients"""
    assert _files(PATIENTS_DIR) == _files(generated)
    stale = [name for name in sorted(_files(generated))
             if (PATIENTS_DIR / name).read_bytes() != (generated / name).read_bytes()]
    assert not stale, f"out of date (regenerate, see the README): {stale}"


def test_every_registry_patient_has_a_record_and_a_hook_request(generated: Path) -> None:
    for name in P.REGISTRY:
        assert (generated / f"{name}.json").is_file()
        assert (generated / "hooks" / f"{name}.json").is_file()
    assert {"adult-likely", "adult-missing-serology", "no-sle"} <= set(P.REGISTRY)  # the demo's three


def test_same_date_same_bytes_and_dates_follow_the_evaluation_date(bundles: dict[str, dict[str, Any]]) -> None:
    again = P.generate(EVAL_AT)
    assert P.dumps(again) == P.dumps(bundles)
    later = P.generate(EVAL_AT + timedelta(days=30), ["adult-likely"])["adult-likely"]
    hcg = {e["resource"]["id"]: e["resource"] for e in later["entry"]}["adult-likely-hcg"]
    assert hcg["effectiveDateTime"].startswith("2026-12-21")  # 5 days before the new date
    assert later["timestamp"] == "2026-12-26T09:00:00Z"


@pytest.mark.parametrize("name", list(P.REGISTRY))
def test_every_resource_is_valid_r4(bundles: dict[str, dict[str, Any]], name: str) -> None:
    bundle = bundles[name]
    validate(bundle)
    assert bundle["type"] == "collection" and bundle["id"] == name
    for entry in bundle["entry"]:
        validate(entry["resource"])
        res = entry["resource"]
        assert entry["fullUrl"] == f"{BASE}/{res['resourceType']}/{res['id']}"
        ref = (res.get("subject") or res.get("patient") or {}).get("reference")
        assert res["resourceType"] == "Patient" or ref == f"Patient/{name}"
    patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert [p["id"] for p in patients] == [name]


def test_resource_ids_are_unique_across_patients(bundles: dict[str, dict[str, Any]]) -> None:
    """A FHIR server holds every patient side by side (docker loader): no id may collide."""
    seen: dict[str, str] = {}
    for name, bundle in bundles.items():
        for entry in bundle["entry"]:
            key = f"{entry['resource']['resourceType']}/{entry['resource']['id']}"
            assert key not in seen, (key, name, seen.get(key))
            seen[key] = name


def test_hook_requests_match_the_service_discovery(generated: Path, bundles: dict[str, dict[str, Any]]) -> None:
    templates = prefetch_templates(P.advertised_queries(BUNDLES_DIR))
    instances = set()
    for name in P.REGISTRY:
        doc = json.loads((generated / "hooks" / f"{name}.json").read_text(encoding="utf-8"))
        hook = HookRequest.model_validate(doc)
        assert hook.hook == "patient-view"
        assert hook.context == {"userId": "Practitioner/example", "patientId": name}
        assert uuid.UUID(hook.hookInstance) and hook.hookInstance not in instances
        instances.add(hook.hookInstance)
        assert hook.prefetch is not None and set(hook.prefetch) == set(templates)
        assert hook.prefetch["patient"] == next(e["resource"] for e in bundles[name]["entry"]
                                                if e["resource"]["resourceType"] == "Patient")


def test_random_patients_are_seeded_and_valid() -> None:
    first = [P.random_patient(i, EVAL_AT, seed=7) for i in range(1, 9)]
    again = [P.random_patient(i, EVAL_AT, seed=7) for i in range(1, 9)]
    assert P.dumps(first) == P.dumps(again)
    assert P.dumps(first) != P.dumps([P.random_patient(i, EVAL_AT, seed=8) for i in range(1, 9)])
    for bundle in first:
        validate(bundle)
        for entry in bundle["entry"]:
            validate(entry["resource"])


def test_cli_writes_extra_patients_on_request(tmp_path: Path) -> None:
    assert P.main(["--at", "2026-11-26T09:00:00Z", "--out", str(tmp_path), "--count", "2"]) == 0
    assert {p.name for p in tmp_path.glob("random-*.json")} == {"random-0001.json", "random-0002.json"}
    assert (tmp_path / "adult-likely.json").read_bytes() == (PATIENTS_DIR / "adult-likely.json").read_bytes()


def test_write_refuses_the_catalogue_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        P.write(tmp_path, EVAL_AT, catalogue_dir=tmp_path)
