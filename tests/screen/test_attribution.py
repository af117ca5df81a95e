"""Which patient a Bulk FHIR line belongs to (cds.screen.bulk), and records the job will not guess."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from cds.catalogue import Catalogue
from cds.screen import run_screen
from cds.screen.bulk import PROBLEM, attribute, fhir_resource_types, split_problem
from cds.screen.worker import RecordProblem, assemble
from tests.conftest import EVAL_AT

READ = {"Observation", "Condition", "Immunization", "MedicationRequest"}


def keys(spark: Any, lines: list[str]) -> list[str | tuple[str, str | None]]:
    df = spark.createDataFrame([(line,) for line in lines], "value string")
    out: list[str | tuple[str, str | None]] = []
    for row in attribute(df, READ).collect():
        key = row["key"]
        out.append(split_problem(key) if key.startswith(PROBLEM) else key)
        assert (row["line"] is None) == key.startswith(PROBLEM)
    return out


def obs(subject: Any = None, **extra: Any) -> str:
    res: dict[str, Any] = {"resourceType": "Observation", "id": "o1", "status": "final",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}}
    if subject is not None:
        res["subject"] = subject
    res.update(extra)
    return json.dumps(res)


@pytest.mark.parametrize("reference, patient", [
    ("Patient/p-1", "p-1"),
    ("Patient/A.b-9", "A.b-9"),
    ("https://ehr.example.org/fhir/Patient/123", "123"),
    ("http://ehr.example.org:8080/base/r4/Patient/123/_history/4", "123"),
    ("Patient/123/_history/2", "123"),
])
def test_well_formed_patient_references_attribute(spark: Any, reference: str, patient: str) -> None:
    assert keys(spark, [obs({"reference": reference})]) == [patient]


@pytest.mark.parametrize("subject", [
    {"reference": "Group/clinic-7"},
    {"reference": "urn:uuid:2f4e8a9c-1f5e-4c1b-9f0e-000000000001"},
    {"reference": "Patient/"},
    {"reference": "Patient/.."},
    {"reference": "Patient/a b"},
    {"reference": "Patient/x/y"},
    {"reference": "Patient/" + "x" * 65},
    {"reference": "#p1"},
    {"reference": "Practitioner/p-1"},
    {"display": "J. Smith"},
    {"identifier": {"system": "urn:mrn", "value": "123"}},
])
def test_unusable_patient_references_are_never_attributed(spark: Any, subject: Any) -> None:
    assert keys(spark, [obs(subject)]) == [("no-patient-reference", "Observation")]


def test_lines_that_are_not_resources_are_counted_by_kind(spark: Any) -> None:
    lines = [
        '{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}',  # truncated
        "[1, 2]",
        '"text"',
        "{'resourceType': 'Patient', 'id': 'p1'}",  # not JSON (single quotes)
        '{"id": "x"}',
        '{"resourceType": "Observaton", "id": "typo"}',
        '{"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}}',
        '{"resourceType": "Observation", "id": "o2", "subject": "Patient/p1"}',
        '{"resourceType": "Patient", "id": "bad id"}',
        '{"resourceType": "Patient", "id": "..."}',
        obs(None),
        "",
        "   ",
    ]
    assert keys(spark, lines) == [
        ("malformed", None), ("malformed", None), ("malformed", None), ("malformed", None),
        ("no-resource-type", None), ("unknown-resource-type", "Observaton"), ("not-read-by-rules", "Encounter"),
        ("malformed-resource", "Observation"), ("invalid-patient-id", None), ("invalid-patient-id", None),
        ("no-patient-reference", "Observation"),
    ]


def test_patients_byte_order_marks_and_two_references(spark: Any) -> None:
    imm = {"resourceType": "Immunization", "id": "i1", "patient": {"reference": "Patient/p1"}}
    assert keys(spark, [
        "\ufeff" + json.dumps({"resourceType": "Patient", "id": "p1"}),
        json.dumps(imm),
        json.dumps(imm | {"subject": {"reference": "Patient/p1"}}),
        json.dumps(imm | {"subject": {"reference": "Patient/p2"}}),
        json.dumps(imm | {"subject": {"reference": "Group/g"}}),
    ]) == ["p1", "p1", "p1", ("conflicting-patient-references", "Immunization"),
           ("no-patient-reference", "Immunization")]


def test_resource_types_come_from_the_engine_model_info() -> None:
    types = fhir_resource_types()
    assert {"Patient", "Observation", "Bundle", "Parameters", "MedicationStatement"} <= types
    assert "DomainResource" not in types and "Observaton" not in types
    assert 140 <= len(types) <= 150


def test_assemble_drops_identical_duplicates_and_refuses_conflicts() -> None:
    patient = json.dumps({"resourceType": "Patient", "id": "p1"})
    a = obs({"reference": "Patient/p1"})
    bundle, dropped = assemble("p1", [a, patient, a])
    assert dropped == 1 and [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "Observation"]
    with pytest.raises(RecordProblem) as exc:
        assemble("p1", [patient, a, obs({"reference": "Patient/p1"}, status="amended")])
    assert exc.value.kind == "conflicting-versions" and "Observation/o1" in exc.value.detail
    with pytest.raises(RecordProblem) as exc:
        assemble("p1", [a])
    assert exc.value.kind == "no-patient-resource"


def test_unreadable_codes_are_those_in_no_system_the_rules_name(catalogue: Catalogue) -> None:
    from cds.screen.bulk import code_systems, primary_code_paths
    from cds.screen.worker import ScreenTask, unreadable_codes

    task = ScreenTask(catalogue=catalogue, trials=(), at="2026-11-26T09:00:00.000Z", gate=None,
                      known_systems=code_systems(catalogue.libraries), code_paths=tuple(primary_code_paths().items()))
    assert {"http://snomed.info/sct", "http://loinc.org", "http://hl7.org/fhir/sid/icd-10-cm"} <= task.known_systems

    def cond(*systems: str, text: str | None = None) -> dict[str, Any]:
        code: dict[str, Any] = {"coding": [{"system": s, "code": "x"} for s in systems]}
        if text:
            code["text"] = text
        return {"resource": {"resourceType": "Condition", "id": "c", "code": code}}

    bundle = {"entry": [
        {"resource": {"resourceType": "Patient", "id": "p"}},
        cond("http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10"),  # readable: SNOMED beside WHO
        cond("http://hl7.org/fhir/sid/icd-10"),
        cond(text="lupus"),
        {"resource": {"resourceType": "MedicationRequest", "id": "m",
                      "medicationCodeableConcept": {"coding": [{"system": "urn:local:formulary", "code": "17"}]}}},
        {"resource": {"resourceType": "MedicationRequest", "id": "r",
                      "medicationReference": {"reference": "Medication/1"}}},
    ]}
    assert unreadable_codes(bundle, task) == ["Condition http://hl7.org/fhir/sid/icd-10", "Condition (no coding)",
                                              "MedicationRequest urn:local:formulary"]


def test_a_small_export_for_one_trial(spark: Any, catalogue: Catalogue, tmp_path: Path) -> None:
    """--trial narrows the screen; conflicting versions and a lone resource leave a patient unscreened."""
    from cds.synthetic import population

    export = tmp_path / "export"
    export.mkdir()
    o = population.Options(12, EVAL_AT, seed=3, sle_rate=1.0)
    lines: dict[str, list[str]] = {}
    dead = set()
    for i in range(o.patients):
        pid, resources, _ = population.build(i, o)
        if i % 2:  # every other patient has died: kept in the table, left off the worklist
            resources[0]["deceasedDateTime"] = "2026-01-05T10:00:00Z"
            dead.add(pid)
        for res in resources:
            lines.setdefault(res["resourceType"], []).append(json.dumps(res))
    first_obs = json.loads(lines["Observation"][0])
    lines["Observation"].append(json.dumps(first_obs))  # identical duplicate: kept once
    lines["Observation"].append(json.dumps(first_obs | {"status": "amended"}))  # a second version: refused
    for rtype, body in lines.items():
        (export / f"{rtype}.ndjson").write_text("\n".join(body) + "\n", encoding="utf-8")
    (export / "notes.txt").write_text("not an export file\n", encoding="utf-8")
    result = run_screen(spark, str(export), tmp_path / "out", catalogue, EVAL_AT, trials=["nct06350110"])
    s = result.summary
    assert [t["id"] for t in s["trials"]] == ["nct06350110"] and list(s["verdicts"]) == ["nct06350110"]
    owner = first_obs["subject"]["reference"].rsplit("/", 1)[-1]
    assert s["patients"]["screened"] == 11 and s["patients"]["notScreened"] == 1
    assert s["patientProblems"]["conflicting-versions"]["patients"] == 1
    with (tmp_path / "out" / "not-screened.csv").open(encoding="utf-8") as fh:
        assert [(r["patient_id"], r["problem"]) for r in csv.DictReader(fh)] == [(owner, "conflicting-versions")]
    rows = spark.read.parquet(str(tmp_path / "out" / "results.parquet")).collect()
    assert {r["trial"] for r in rows} == {"nct06350110"} and len(rows) == 11
    assert {r["patient_id"] for r in rows if r["deceased"]} == dead - {owner}
    candidates = {r["patient_id"] for r in rows if r["verdict"] != "excluded"}
    assert s["patients"]["deceasedCandidates"] == len(candidates & dead) > 0
    with (tmp_path / "out" / "worklist.csv").open(encoding="utf-8") as fh:
        assert {r["patient_id"] for r in csv.DictReader(fh)} == candidates - dead


def _small_export(tmp_path: Path, patients: int = 6) -> Path:
    from cds.synthetic import population

    export = tmp_path / "export"
    population.write(export, population.Options(patients, EVAL_AT, seed=4, sle_rate=0.5), processes=1)
    return export


def test_a_failing_evaluation_is_reported_per_patient_not_fatal(spark: Any, catalogue: Catalogue,
                                                                tmp_path: Path) -> None:
    result = run_screen(spark, str(_small_export(tmp_path)), tmp_path / "out", catalogue, EVAL_AT, timeout=0.001)
    s = result.summary
    assert s["patients"]["screened"] + s["patients"]["notScreened"] == 6
    assert s["patientProblems"]["evaluation-failed"]["patients"] == s["patients"]["notScreened"] > 0
    with (tmp_path / "out" / "not-screened.csv").open(encoding="utf-8") as fh:
        assert {r["problem"] for r in csv.DictReader(fh)} == {"evaluation-failed"}


def test_an_engine_that_cannot_start_fails_the_job_with_one_clear_line(spark: Any, catalogue: Catalogue,
                                                                       tmp_path: Path) -> None:
    from cds.screen import ScreenFailed

    broken = Catalogue(trials=catalogue.trials, libraries={**catalogue.libraries, "SLECommon": {"library": {}}})
    with pytest.raises(ScreenFailed) as exc:
        run_screen(spark, str(_small_export(tmp_path)), tmp_path / "out", broken, EVAL_AT)
    message = str(exc.value)
    assert message.startswith("the screening job failed: ") and "\n" not in message
    assert "Engine" in message or "CQL" in message


def test_failure_reason_picks_the_python_exception_out_of_spark_text() -> None:
    from cds.screen.job import failure_reason

    text = ("An error occurred while calling o123.count.\n: org.apache.spark.SparkException: Job aborted\n"
            "Traceback (most recent call last):\n  File \"worker.py\", line 1\n"
            "cds.engine.pool.EngineUnavailable: CQL workers failed to start: boom\n"
            "\tat org.apache.spark.api.python.BasePythonRunner.run(PythonRunner.scala:1)\n")
    assert failure_reason(RuntimeError(text)) == "cds.engine.pool.EngineUnavailable: CQL workers failed to start: boom"
    assert failure_reason(RuntimeError("plain")) == "plain"


def test_progress_lines_and_patient_files() -> None:
    import io

    from rich.console import Console

    from cds.screen.bulk import patient_files
    from cds.screen.progress import DictAccumulator, ProgressView

    assert DictAccumulator().addInPlace({"a": 1}, {"a": 2, "b": 1}) == {"a": 3, "b": 1}
    buf = io.StringIO()
    view = ProgressView(Console(file=buf, width=200), {"nct06350110": "t"}, every=3600)
    snap = {"stages": [{"id": 3, "name": "x", "tasks": 8, "done": 2, "running": 2}], "expected": 1000,
            "counts": {"patients": 250, "in-population": 9, "likely-eligible:nct06350110": 2}}
    view.update(snap)
    view.update(snap)  # within `every`: not printed again
    view.update(snap | {"final": True})
    view.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("screened 250 of 1,000 patients, 9 in the population") and "2/8 tasks" in lines[0]
    assert "nct06350110: 2 likely, 0 possibly eligible" in lines[1] and len(lines) == 4
    assert patient_files(["/x/Patient.000.ndjson", "/x/1.Patient.ndjson.gz", "/x/PatientX.ndjson",
                          "/x/Observation.ndjson", "s3a://b/Patient-2.ndjson"]) == [
        "/x/Patient.000.ndjson", "/x/1.Patient.ndjson.gz", "s3a://b/Patient-2.ndjson"]
