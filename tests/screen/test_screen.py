"""`trial-cds screen` on a generated population: the same verdicts as `trial-cds evaluate`, every
unusable line counted, reruns identical, and the files a coordinator reads."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import cds
import cds.catalogue
import cds.paths
from cds.catalogue import Catalogue
from cds.screen import ScreenError, ScreenResult, run_screen
from tests.conftest import EVAL_AT

from .conftest import PATIENTS, Population, read_ndjson

_PATIENT_REF = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]+)?$")


def records(path: Path) -> dict[str, dict[str, Any]]:
    """Each patient's Bundle, grouped the plain way (the oracle's side, not the job's code).

    A record is a set of resources; evidence lists follow the order of the Bundle, so the Bundle
    lists them in one stated order (Patient, then by type and id) as the screening job does."""
    patients: dict[str, dict[str, Any]] = {}
    others: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for res in read_ndjson(path):
        if res.get("resourceType") == "Patient":
            patients[res["id"]] = res
            continue
        ref = (res.get("subject") or res.get("patient") or {}).get("reference", "")
        m = _PATIENT_REF.search(ref) if isinstance(ref, str) else None
        if m:
            others[m.group(1)].append(res)
    return {pid: {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": r} for r in [p, *sorted(others.get(pid, []), key=_order)]]}
            for pid, p in patients.items()}


def _order(res: dict[str, Any]) -> tuple[str, str]:
    return (res["resourceType"], res.get("id", ""))


def parquet_rows(spark: Any, out: Path) -> list[Any]:
    return spark.read.parquet(str(out / "results.parquet")).collect()


def _criteria(criteria: Any) -> list[tuple[Any, ...]]:
    return [(c["id"], c["type"], c["status"],
             [(e["reference"], e["value"], e["unit"], e["date"], e["note"]) for e in c["evidence"]],
             [(m["system"], m["code"], m["display"]) for m in c["missing"]]) for c in criteria]


def _expected_criteria(result: Any) -> list[tuple[Any, ...]]:
    return [(c.id, c.type, c.status,
             [(e.reference, None if e.value is None else str(e.value), e.unit, e.date, e.note) for e in c.evidence],
             [(m.system, m.code, m.display) for m in c.missing]) for c in result.criteria]


def test_every_patient_gets_the_verdicts_and_criteria_of_evaluate(spark: Any, screened: ScreenResult,
                                                                   generated: Population) -> None:
    by_patient: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in parquet_rows(spark, screened.out):
        by_patient[row["patient_id"]][row["trial"]] = row
    bundles = records(generated.path)
    assert len(bundles) == PATIENTS and set(by_patient) == set(bundles)
    seen = {"likely-eligible": 0, "possibly-eligible": 0, "excluded": 0, "outside": 0}
    for pid, bundle in sorted(bundles.items()):
        expected = cds.evaluate_trials(bundle, EVAL_AT)
        assert set(by_patient[pid]) == {r.researchStudy for r in expected}
        for result in expected:
            row = by_patient[pid][result.researchStudy]
            assert row["verdict"] == result.verdict, (pid, result.researchStudy)
            if row["in_population"]:
                assert _criteria(row["criteria"]) == _expected_criteria(result), (pid, result.researchStudy)
                seen[result.verdict] += 1
            else:  # outside the catalogue's population: evaluate excludes on a not-met inclusion
                assert any(c.type == "inclusion" and c.status == "not-met" for c in result.criteria)
                assert row["criteria"] == []
                seen["outside"] += 1
    assert all(seen.values()), seen  # the population exercised every verdict and the gate


def test_the_command_line_evaluate_agrees_on_sample_patients(spark: Any, screened: ScreenResult,
                                                              generated: Population, tmp_path: Path) -> None:
    rows = parquet_rows(spark, screened.out)
    picks = {}
    for kind in ("likely-eligible", "possibly-eligible"):
        picks[kind] = next(r["patient_id"] for r in rows if r["verdict"] == kind)
    picks["outside"] = next(r["patient_id"] for r in rows if not r["in_population"])
    bundles = records(generated.path)
    for pid in picks.values():
        path = tmp_path / f"{pid}.json"
        path.write_text(json.dumps(bundles[pid]), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "cds.cli", "evaluate", str(path), "--at", EVAL_AT.isoformat(),
                               "--json"], capture_output=True, text=True, timeout=120, check=True)
        expected = {r["researchStudy"]: r for r in json.loads(done.stdout)}
        for row in (r for r in rows if r["patient_id"] == pid):
            assert row["verdict"] == expected[row["trial"]]["verdict"]
            if row["in_population"]:
                assert [(c["id"], c["status"]) for c in row["criteria"]] == [
                    (c["id"], c["status"]) for c in expected[row["trial"]]["criteria"]]


def test_unusable_lines_are_counted_and_reported_not_guessed(screened: ScreenResult, generated: Population) -> None:
    injected = generated.manifest["extension"]["https://trial-cds.dev/synthetic-population"]["defects"]
    s = screened.summary
    assert s["patients"]["screened"] == PATIENTS
    assert sum(s["lineProblems"]["malformed"].values()) == injected["malformed"]
    assert sum(s["lineProblems"]["no-patient-reference"].values()) == injected["no-patient-reference"]
    assert s["lineProblems"]["unknown-resource-type"] == {"Observaton": injected["unknown-resource-type"]}
    assert s["patientProblems"]["no-patient-resource"]["patients"] == injected["no-patient-resource"]
    encounters = sum(f["count"] for f in generated.manifest["output"] if f["type"] == "Encounter")
    assert s["notReadByRules"] == {"Encounter": encounters}
    with (screened.out / "not-screened.csv").open(encoding="utf-8") as fh:
        listed = list(csv.DictReader(fh))
    assert {r["patient_id"] for r in listed} == {f"not-exported-{i}" for i in range(injected["no-patient-resource"])}
    assert all(r["problem"] == "no-patient-resource" for r in listed)
    report = (screened.out / "report.html").read_text(encoding="utf-8")
    assert "Observaton" in report and "without a usable patient reference" in report


def test_codes_no_rule_reads_are_counted_and_other_icd10_codings_screen_in(spark: Any, screened: ScreenResult,
                                                                            generated: Population) -> None:
    """Results coded only in a local lab catalogue are counted by type and system (and the patients
    outside the population holding one); SLE coded in WHO ICD-10 or ICD-10-CM only is in the population."""
    from cds.screen.bulk import code_systems
    from cds.synthetic.population import LOCAL_LAB

    codes = screened.summary["codesNoRuleReads"]
    local = sum(1 for r in read_ndjson(generated.path) if r.get("resourceType") == "Observation"
                and r["code"]["coding"][0]["system"] == LOCAL_LAB)
    assert local > 0 and codes["resources"][f"Observation {LOCAL_LAB}"] == local
    assert 0 < codes["patientsOutsidePopulation"] <= local
    known = code_systems(cds.catalogue.Catalogue.from_directory(cds.paths.BUNDLES_DIR).libraries)
    assert all(not set(k.split(" ", 1)[1].split(",")) & known for k in codes["resources"])
    assert "Codes no rule reads" in (screened.out / "report.html").read_text(encoding="utf-8")
    profiles = generated.manifest["extension"]["https://trial-cds.dev/synthetic-population"]["profiles"]
    assert profiles.get("sle-coding:who-icd10-only", 0) > 0 and profiles.get("sle-coding:icd10cm-only", 0) > 0


def test_a_rerun_writes_identical_output(spark: Any, screened: ScreenResult, generated: Population,
                                         catalogue: Catalogue, tmp_path: Path) -> None:
    run_screen(spark, str(generated.path), tmp_path, catalogue, EVAL_AT, partitions=5)
    for name in ("summary.json", "worklist.csv", "not-screened.csv", "report.html"):
        assert (tmp_path / name).read_bytes() == (screened.out / name).read_bytes(), name
    assert parquet_rows(spark, tmp_path) == parquet_rows(spark, screened.out)


def test_worklist_likely_first_then_possibly_with_what_to_order(spark: Any, screened: ScreenResult) -> None:
    with (screened.out / "worklist.csv").open(encoding="utf-8") as fh:
        worklist = list(csv.DictReader(fh))
    verdicts = [r["verdict"] for r in worklist]
    assert verdicts == sorted(verdicts, key=lambda v: v != "likely-eligible")
    rows = parquet_rows(spark, screened.out)
    candidates = {(r["trial"], r["patient_id"]) for r in rows
                  if r["verdict"] in ("likely-eligible", "possibly-eligible") and not r["deceased"]}
    assert {(r["trial"], r["patient_id"]) for r in worklist} == candidates
    deceased = {r["patient_id"] for r in rows if r["deceased"] and r["verdict"] != "excluded"}
    assert screened.summary["patients"]["deceasedCandidates"] == len(deceased)
    possibly = [r for r in worklist if r["verdict"] == "possibly-eligible"]
    assert possibly and all(r["undecided"] for r in possibly)
    assert any("http://loinc.org|" in r["to_order"] for r in possibly)
    assert all(not r["undecided"] and not r["to_order"] for r in worklist if r["verdict"] == "likely-eligible")


def test_report_is_self_contained_and_shows_the_counts(screened: ScreenResult) -> None:
    html = (screened.out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)
    assert html.count("<svg") >= 3
    for t in screened.summary["trials"]:
        assert t["id"] in html
        likely = screened.summary["verdicts"][t["id"]]["likely-eligible"]
        assert f'<td class="n">{likely:,}</td>' in html
    top = screened.summary["missingTests"][0]
    assert top["display"] in html


def test_unknown_trial_and_missing_input_are_clear_errors(spark: Any, catalogue: Catalogue, generated: Population,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ScreenError, match="unknown trial"):
        run_screen(spark, str(generated.path), tmp_path, catalogue, EVAL_AT, trials=["nct00000000"])
    with pytest.raises(ScreenError, match="no Bulk FHIR files"):
        run_screen(spark, str(tmp_path / "nowhere"), tmp_path, catalogue, EVAL_AT)
