"""The ELM compiler on small libraries written for it: value sets and terminology, what it
refuses (and how the worker then answers), and its exact fast paths.

Each library is evaluated by both engines in one worker; the compiled engine alone
(`fallback: false`) must give the reference engine's values, and the values are also checked
against what CQL says they are, so a shared mistake cannot pass.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from cds.engine import load_elm_dir
from cds.engine.engine import execution_time
from cds.engine.pool import ENGINE_DIR, EngineError, WorkerPool, node_command
from cds.engine.translator import Translator
from cds.engine.values import Code, decode
from cds.paths import ELM_DIR
from tests.conftest import compile_libraries

AT = execution_time(datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CREATININE_VS = "https://trial-cds.dev/ValueSet/test-creatinine"
SLE_VS = "https://trial-cds.dev/ValueSet/test-sle"

VALUE_SETS = {
    CREATININE_VS: {"1.0.0": [{"code": "2160-0", "system": LOINC}, {"code": "14682-9", "system": LOINC}]},
    SLE_VS: {"1.0.0": [{"code": "55464009", "system": SCT}, {"code": "M32.10", "system": ICD10CM},
                       {"code": "M32.9", "system": ICD10CM}]},
}

TERMINOLOGY_CQL = f"""
library CompilerValueSets version '1'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers

codesystem "LOINC": '{LOINC}'
codesystem "SNOMEDCT": '{SCT}'
valueset "Creatinine": '{CREATININE_VS}'
valueset "SLE": '{SLE_VS}'
code "Creatinine mass": '2160-0' from "LOINC" display 'Creatinine [Mass/volume]'
code "Potassium": '2823-3' from "LOINC"
code "SLE code": '55464009' from "SNOMEDCT"
concept "Creatinine concept": {{ "Creatinine mass", "Potassium" }} display 'creatinine or potassium'

context Patient

define "Creatinine Observations": [Observation: "Creatinine"]
define "Lupus Conditions": [Condition: "SLE"]
define "Observations by code": [Observation: "Creatinine mass"]
define "Observations by concept": [Observation: "Creatinine concept"]
define "Observations code in": [Observation: code in "Creatinine"]
define "Code In": "Creatinine mass" in "Creatinine"
define "Other Code In": "Potassium" in "Creatinine"
define "Concept In": "Creatinine concept" in "Creatinine"
define "Null In": (null as Code) in "Creatinine"
define "Lupus Codes In": "Lupus Conditions" C where C.code in "SLE" return C.id
define "Any Code In": exists ("Creatinine Observations" O where FHIRHelpers.ToConcept(O.code) in "Creatinine")
define "Expanded": ExpandValueSet("SLE")
define "The Code": "Creatinine mass"
define "The Concept": "Creatinine concept"
define "SLE Code Equivalent": "SLE code" ~ Code '55464009' from "SNOMEDCT"
"""

MISSING_VS_CQL = """
library CompilerMissingValueSet version '1'
using FHIR version '4.0.1'
valueset "Not Loaded": 'https://trial-cds.dev/ValueSet/absent'
context Patient
define "Missing Value Set": [Observation: "Not Loaded"]
"""

SHADOW_CQL = """
library CompilerShadow version '1'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
context Patient
define "O": 5
define "Observation Ids": [Observation] O return O.id
define "Five": "O"
"""

PARAMETER_CQL = """
library CompilerParameter version '1'
using FHIR version '4.0.1'
parameter "Threshold" Integer
context Patient
define "Reads The Parameter": "Threshold"
define "Other": 1 + 1
"""


def observation(oid: str, system: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": "2026-11-01",
            "valueQuantity": {"value": 1.1, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}


def condition(cid: str, codings: list[tuple[str, str]]) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "code": {"coding": [{"system": s, "code": c} for s, c in codings]}}


BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
    {"resourceType": "Patient", "id": "p1", "birthDate": "1980-05-01"},
    observation("creat-mass", LOINC, "2160-0"),
    observation("creat-molar", LOINC, "14682-9"),
    observation("potassium", LOINC, "2823-3"),
    observation("wrong-system", SCT, "2160-0"),
    condition("sle-snomed", [(SCT, "55464009")]),
    condition("sle-icd", [(ICD10CM, "M32.9"), (SCT, "1234")]),
    condition("other", [(ICD10CM, "M32.0")]),
]]}


@pytest.fixture(scope="module")
def all_libraries(translator: Translator) -> dict[str, dict[str, Any]]:
    libs = {"FHIRHelpers": load_elm_dir(ELM_DIR)["FHIRHelpers"]}
    libs.update(compile_libraries(translator, [TERMINOLOGY_CQL, MISSING_VS_CQL, SHADOW_CQL, PARAMETER_CQL]))
    return libs


@pytest.fixture(scope="module")
def libraries(all_libraries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # The pool's warm-up evaluates every library it holds: not the one that always fails.
    return {k: v for k, v in all_libraries.items() if k != "CompilerMissingValueSet"}


@pytest.fixture(scope="module")
def pool(libraries: dict[str, dict[str, Any]]) -> Iterator[WorkerPool]:
    with WorkerPool(libraries, size=1, engine="compiled", value_sets=VALUE_SETS, timeout=60.0) as p:
        yield p


def evaluate(pool: WorkerPool, library: str, engine: str, **extra: Any) -> dict[str, Any]:
    reply = pool.request({"op": "evaluate", "libraries": [library], "bundle": BUNDLE, "executionDateTime": AT,
                          "engine": engine, **extra})
    return {"ran": reply["ran"], "values": {k: decode(v) for k, v in reply["results"][library].items()}}


def ids(value: Any) -> list[str]:
    return sorted(v.json["id"] for v in value)


def test_value_sets_and_codes_on_both_engines(pool: WorkerPool) -> None:
    reference = evaluate(pool, "CompilerValueSets", "reference")["values"]
    compiled = evaluate(pool, "CompilerValueSets", "compiled", fallback=False)
    assert compiled["ran"]["compiled"] == ["CompilerValueSets"]
    values = compiled["values"]
    assert values == reference
    assert ids(values["Creatinine Observations"]) == ["creat-mass", "creat-molar"]
    assert ids(values["Lupus Conditions"]) == ["sle-icd", "sle-snomed"]
    assert ids(values["Observations by code"]) == ["creat-mass"]
    assert ids(values["Observations by concept"]) == ["creat-mass", "potassium"]
    assert ids(values["Observations code in"]) == ["creat-mass", "creat-molar"]
    assert values["Code In"] is True and values["Other Code In"] is False and values["Concept In"] is True
    assert values["Null In"] is False  # CQL: a null code is not in the value set
    assert sorted(v.json["value"] for v in values["Lupus Codes In"]) == ["sle-icd", "sle-snomed"]
    assert values["Any Code In"] is True
    assert sorted((c.system, c.code) for c in values["Expanded"]) == [(ICD10CM, "M32.10"), (ICD10CM, "M32.9"),
                                                                       (SCT, "55464009")]
    assert values["The Code"] == Code("2160-0", LOINC, None, "Creatinine [Mass/volume]")
    assert [c.code for c in values["The Concept"].codes] == ["2160-0", "2823-3"]
    assert values["SLE Code Equivalent"] is True


def test_a_value_set_that_is_not_loaded_fails_alike(all_libraries: dict[str, dict[str, Any]]) -> None:
    # The whole library fails on both engines (the reference throws "Unable to resolve ...").
    with WorkerPool({}, size=1, engine="compiled") as pool:
        pool.request({"op": "load", "libraries": all_libraries, "valueSets": VALUE_SETS})
        for engine, extra in (("reference", {}), ("compiled", {"fallback": False})):
            with pytest.raises(EngineError, match="Unable to resolve expected valueset"):
                pool.request({"op": "evaluate", "libraries": ["CompilerMissingValueSet"], "bundle": BUNDLE,
                              "executionDateTime": AT, "engine": engine, **extra})
            report = pool.request({"op": "compare", "libraries": ["CompilerMissingValueSet", "CompilerValueSets"],
                               "records": [{"bundle": BUNDLE, "executionDateTime": AT}]})
        assert report["bothFailed"] == 1 and report["mismatches"] == []


def test_a_define_named_like_an_alias_runs_on_the_reference_engine(pool: WorkerPool, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    # cql-execution looks names up through its chain of contexts, where an alias "O" hides the
    # define "O"; the compiler refuses rather than guess, and says so when the worker loads.
    assert "CompilerShadow" in pool.load_info["fallback"]
    assert "shares its name with an alias" in pool.load_info["fallback"]["CompilerShadow"][0]
    result = evaluate(pool, "CompilerShadow", "compiled")
    assert result["ran"] == {"compiled": [], "reference": ["CompilerShadow"]}
    assert result["values"]["Five"] == 5
    with pytest.raises(EngineError, match="not run by the compiled engine: CompilerShadow"):
        evaluate(pool, "CompilerShadow", "compiled", fallback=False)


def test_unsupported_library_is_logged_at_load(libraries: dict[str, dict[str, Any]],
                                               caplog: pytest.LogCaptureFixture) -> None:
    shadow = {"FHIRHelpers": libraries["FHIRHelpers"], "CompilerShadow": libraries["CompilerShadow"]}
    with caplog.at_level(logging.WARNING, logger="cds.engine.pool"), WorkerPool(shadow, size=1, engine="compiled") as p:
        assert list(p.load_info["fallback"]) == ["CompilerShadow"]
    assert any("CompilerShadow runs on the reference engine" in r.getMessage() for r in caplog.records)


def test_divergence_is_answered_by_the_reference_engine(pool: WorkerPool) -> None:
    # A parameter with no default and no value: the reference engine returns its own
    # ParameterDef object there; the compiled engine does not imitate that, it hands over.
    result = evaluate(pool, "CompilerParameter", "compiled")
    assert result["ran"] == {"compiled": [], "reference": ["CompilerParameter"]}
    assert result["values"]["Other"] == 2
    with pytest.raises(EngineError, match="cannot decide this exactly: parameter Threshold has no default"):
        evaluate(pool, "CompilerParameter", "compiled", fallback=False)


def test_parameters_passed_in_go_to_the_reference_engine(pool: WorkerPool) -> None:
    reply = pool.request({"op": "evaluate", "libraries": ["CompilerParameter"], "bundle": BUNDLE,
                          "executionDateTime": AT, "parameters": {"CompilerParameter": {"Threshold": 7}}})
    assert reply["ran"]["reference"] == ["CompilerParameter"]
    assert reply["results"]["CompilerParameter"]["Reads The Parameter"] == 7


@pytest.mark.parametrize("patches", ["all", "none"])
def test_distinct_fast_path_equals_the_reference(patches: str) -> None:
    """compiler/selfcheck.mjs: the distinct-list fast path keeps exactly the elements
    cql-execution's own toDistinctList keeps, on random lists of tuples, codes, date-times in
    several offsets and precisions, intervals, quantities in convertible units, FHIR objects
    (with the fhir-distinct-keys patch and without)."""
    proc = subprocess.run([node_command()[0], str(ENGINE_DIR / "compiler" / "selfcheck.mjs"), "4000"],
                          cwd=ENGINE_DIR, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRIAL_CDS_ENGINE_PATCHES": patches})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["lists"] == 4000 and report["duplicates"] > 500 and report["different"] == [], report
