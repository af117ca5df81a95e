"""The synthetic Bulk FHIR population (cds.synthetic.population): deterministic, realistic shares,
every line attributable unless it is an injected defect."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cds.synthetic import population
from tests.conftest import EVAL_AT

REF = re.compile(r"^(?:https://trial-cds\.dev/fhir/)?Patient/(pop\d+-\d{7})(?:/_history/1)?$")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_same_bytes_other_seed_other_patients(tmp_path: Path) -> None:
    o = population.Options(400, EVAL_AT, seed=11, defects=True)
    population.write(tmp_path / "a", o, processes=1)
    population.write(tmp_path / "b", o, processes=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    population.write(tmp_path / "c", population.Options(400, EVAL_AT, seed=12), processes=1)
    assert (tmp_path / "c" / "Patient.000.ndjson").read_bytes() != (tmp_path / "a" / "Patient.000.ndjson").read_bytes()


def test_shares_profiles_and_references(tmp_path: Path) -> None:
    manifest = population.write(tmp_path, population.Options(3000, EVAL_AT, seed=5), processes=2)
    meta = manifest["extension"]["https://trial-cds.dev/synthetic-population"]
    sle = sum(v for k, v in meta["profiles"].items() if k.startswith("sle:"))
    assert 0.01 * 3000 <= sle <= 0.03 * 3000 and meta["profiles"]["other"] == 3000 - sle
    assert 0.01 * 3000 <= meta["profiles"]["deceased"] <= 0.03 * 3000
    big = population.write(tmp_path / "sle", population.Options(800, EVAL_AT, seed=5, sle_rate=1.0), processes=2)
    profiles = big["extension"]["https://trial-cds.dev/synthetic-population"]["profiles"]
    assert {f"sle:{p}" for p, _ in population.SLE_PROFILES} <= set(profiles)
    assert {k.split(":", 1)[1] for k in profiles if k.startswith("sle-coding:")} == {
        "as-built", "snomed-only", "icd10cm-only", "who-icd10-only", "snomed-descendant", "text"}
    ids: set[tuple[str, str]] = set()
    patients: set[str] = set()
    for file in sorted((tmp_path / "sle").glob("*.ndjson")):
        for line in file.read_text(encoding="utf-8").splitlines():
            res = json.loads(line)
            key = (res["resourceType"], res["id"])
            assert key not in ids
            ids.add(key)
            if res["resourceType"] == "Patient":
                patients.add(res["id"])
                continue
            ref = (res.get("subject") or res.get("patient"))["reference"]
            m = REF.match(ref)
            assert m and res["id"].startswith(m.group(1) + "-"), ref  # its own patient's, well formed
    assert len(patients) == 800
    kinds = {json.loads(line)["resourceType"] for f in (tmp_path / "sle").glob("*.ndjson")
             for line in f.read_text(encoding="utf-8").splitlines()}
    assert {"Patient", "Condition", "Observation", "MedicationRequest", "MedicationStatement", "Encounter"} <= kinds
