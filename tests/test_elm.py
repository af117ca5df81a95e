"""Data requirements read from ELM: which resource types, and which codes, the libraries retrieve.

The ELM comes from the real translator, so these tests pin the shapes it emits (a single code
is `ToList(CodeRef)`, a code-list define is `ToList(ExpressionRef)`, a concept is
`Property(codes, ConceptRef)`), not shapes imagined for the test. The shapes depend on
FHIRHelpers being included (its conversions decide how the translator resolves a retrieve's
terminology), so the main library includes it, as every real library does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cds.engine import elm
from cds.engine.elm import CodeKey
from cds.engine.translator import Translator
from cds.paths import ELM_DIR, RULES_DIR

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

CODES_CQL = """
library ElmCodes version '1'

using FHIR version '4.0.1'

codesystem "LOINC": 'http://loinc.org'
codesystem "SNOMEDCT": 'http://snomed.info/sct'

code "Hemoglobin": '718-7' from "LOINC" display 'Hemoglobin [Mass/volume] in Blood'

define "Platelet Codes": {
  Code '777-3' from "LOINC" display 'Platelets [#/volume] in Blood by Automated count',
  Code '26515-7' from "LOINC" display 'Platelets [#/volume] in Blood'
}
define "SLE Codes": { Code '55464009' from "SNOMEDCT" display 'Systemic lupus erythematosus' }
"""

MAIN_CQL = """
library ElmMain version '1'

using FHIR version '4.0.1'

include FHIRHelpers version '4.0.1'
include ElmCodes version '1' called Codes

codesystem "LOINC": 'http://loinc.org'
codesystem "RxNorm": 'http://www.nlm.nih.gov/research/umls/rxnorm'

code "Creatinine": '2160-0' from "LOINC" display 'Creatinine [Mass/volume] in Serum or Plasma'
code "Urea": '3094-0' from "LOINC"
code "Prednisone": '8640' from "RxNorm" display 'prednisone'

concept "Kidney Panel": { "Urea" } display 'Kidney panel'

valueset "Transplant Procedures": 'http://example.org/fhir/ValueSet/transplant'

define "Creatinine Codes": { "Creatinine", Code '14682-9' from "LOINC" }

context Patient

define "Creatinine Results": [Observation: "Creatinine"]
define "Creatinine Any Unit": [Observation: "Creatinine Codes"]
define "Urea Results": [Observation: "Kidney Panel"]
define "Hemoglobin": [Observation: Codes."Hemoglobin"]
define "Platelets": [Observation: Codes."Platelet Codes"]
define "SLE": [Condition: Codes."SLE Codes"]
define "Steroids": [MedicationRequest: "Prednisone"]
define "Encounters": [Encounter]
define "Transplants": [Procedure: "Transplant Procedures"]
define function "Final"(obs List<Observation>): obs O where O.status = 'final'
define "Final Creatinine": "Final"("Creatinine Results")
"""

# A type that one retrieve filters and another does not: everything of it is needed.
MIXED_CQL = """
library ElmMixed version '1'

using FHIR version '4.0.1'

codesystem "LOINC": 'http://loinc.org'

code "Creatinine": '2160-0' from "LOINC"

define "Creatinine Codes": { "Creatinine" }
define "Computed Codes": "Creatinine Codes" C where C.code = '2160-0'

context Patient

define "Creatinine Results": [Observation: "Creatinine"]
define "All Observations": [Observation]
define "Computed": [Condition: "Computed Codes"]
"""


@pytest.fixture(scope="module")
def libraries() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    compiled = ELM_DIR / "FHIRHelpers.json"  # the committed ELM (a build test keeps it current)
    sources = [CODES_CQL, MAIN_CQL, MIXED_CQL]
    if compiled.exists():
        out["FHIRHelpers"] = json.loads(compiled.read_text(encoding="utf-8"))
    else:
        sources.append((RULES_DIR / "FHIRHelpers.cql").read_text(encoding="utf-8"))
    with Translator([RULES_DIR]) as translator:
        for cql in sources:
            t = translator.translate(cql, {"ElmCodes": CODES_CQL})
            assert t.ok and t.elm is not None, [m.format(t.library) for m in t.errors]
            out[elm.library_name(t.elm)] = t.elm
    return out


def retrieve_codes(library: dict[str, Any], define: str) -> dict[str, Any]:
    stmt = next(d for d in library["library"]["statements"]["def"] if d["name"] == define)
    return stmt["expression"]["codes"]


def test_translator_shapes_the_resolver_relies_on(libraries: dict[str, dict[str, Any]]) -> None:
    main = libraries["ElmMain"]
    single = retrieve_codes(main, "Creatinine Results")
    assert single["type"] == "ToList" and single["operand"]["type"] == "CodeRef"
    listed = retrieve_codes(main, "Creatinine Any Unit")
    assert listed["type"] == "ToList" and listed["operand"]["type"] == "ExpressionRef"
    included = retrieve_codes(main, "Platelets")
    assert included["operand"] == {**included["operand"], "type": "ExpressionRef", "libraryName": "Codes"}
    concept = retrieve_codes(main, "Urea Results")
    assert concept["type"] == "Property" and concept["path"] == "codes"
    assert concept["source"]["type"] == "ConceptRef"
    # A code filter on MedicationRequest also reaches medications by reference: the translator
    # adds an unfiltered MedicationRequest retrieve joined to [Medication] on the code.
    steroids = next(d for d in main["library"]["statements"]["def"] if d["name"] == "Steroids")["expression"]
    assert steroids["type"] == "Union"
    assert [op["type"] for op in steroids["operand"]] == ["Retrieve", "Query"]


def test_library_helpers(libraries: dict[str, dict[str, Any]]) -> None:
    main = libraries["ElmMain"]
    assert elm.library_name(main) == "ElmMain"
    assert elm.library_version(main) == "1"
    assert elm.includes(main) == {"FHIRHelpers": "FHIRHelpers", "Codes": "ElmCodes"}
    names = elm.define_names(main)
    assert names[:2] == ["Creatinine Codes", "Creatinine Results"]
    assert "Final" not in names and "Patient" not in names and "Final Creatinine" in names
    assert sorted(elm.closure(["ElmMain"], libraries)) == ["ElmCodes", "ElmMain", "FHIRHelpers"]
    assert elm.closure(["ElmMixed"], libraries) == ["ElmMixed"]
    with pytest.raises(KeyError, match="library ElmCodes is not compiled"):
        elm.closure(["ElmMain"], {"ElmMain": main})


def test_static_codes_are_resolved(libraries: dict[str, dict[str, Any]]) -> None:
    req = elm.data_requirements(["ElmMain"], libraries)
    obs = req["Observation"]
    assert obs.codes == {
        CodeKey(LOINC, "2160-0"),  # CodeRef
        CodeKey(LOINC, "14682-9"),  # Code selector inside a define list (ExpressionRef)
        CodeKey(LOINC, "3094-0"),  # Property(codes) of a ConceptRef
        CodeKey(LOINC, "718-7"),  # CodeRef into the included library
        CodeKey(LOINC, "777-3"),  # ExpressionRef into the included library ...
        CodeKey(LOINC, "26515-7"),  # ... resolving that library's own code system
    }
    assert obs.code_paths == {"code"}
    assert req["Condition"].codes == {CodeKey(SNOMED, "55464009")}
    # By code or by a reference to a Medication with the code: every MedicationRequest and
    # every Medication may matter.
    assert req["MedicationRequest"].codes is None
    assert req["MedicationRequest"].code_paths == {"medication"}
    assert req["Medication"].codes is None


def test_unresolvable_or_unfiltered_retrieves_need_everything(libraries: dict[str, dict[str, Any]]) -> None:
    req = elm.data_requirements(["ElmMain"], libraries)
    assert req["Encounter"].codes is None  # no code filter
    assert req["Procedure"].codes is None  # a value set: not expanded statically
    assert req["Patient"].codes is None  # the context retrieve
    mixed = elm.data_requirements(["ElmMixed"], libraries)
    assert mixed["Observation"].codes is None  # filtered once, unfiltered once
    assert mixed["Condition"].codes is None  # codes computed by a query
    assert set(mixed) == {"Patient", "Observation", "Condition"}


def test_requirements_cover_the_named_libraries_only(libraries: dict[str, dict[str, Any]]) -> None:
    both = elm.data_requirements(["ElmMain", "ElmMixed"], libraries)
    assert both["Observation"].codes is None
    assert both["Condition"].codes is None
    assert both["Encounter"].codes is None
    only_codes = elm.data_requirements(["ElmCodes"], libraries)
    assert only_codes == {}  # code definitions alone retrieve nothing (no context, no retrieve)


def test_hand_written_elm_edge_cases() -> None:
    """Shapes the translator does not emit for our CQL but the resolver must survive."""

    def library(name: str, codes: Any, **extra: Any) -> dict[str, Any]:
        return {"library": {
            "identifier": {"id": name, "version": "1"},
            "codeSystems": {"def": [{"name": "LOINC", "id": LOINC}]},
            "codes": {"def": [{"name": "A", "id": "1-1", "codeSystem": {"name": "LOINC"}}]},
            "statements": {"def": [
                {"name": "Self", "expression": {"type": "ExpressionRef", "name": "Self"}},
                {"name": "R", "expression": {"type": "Retrieve", "dataType": "{http://hl7.org/fhir}Observation",
                                             "codeProperty": "code", "codes": codes}},
                {"name": "Q", "expression": {"type": "Retrieve", "dataType": "{urn:example}Other"}},
            ]},
            **extra,
        }}

    def obs_codes(codes: Any) -> set[CodeKey] | None:
        return elm.data_requirements(["L"], {"L": library("L", codes)})["Observation"].codes

    assert obs_codes({"type": "Union", "operand": [
        {"type": "ToList", "operand": {"type": "CodeRef", "name": "A"}},
        {"type": "List", "element": [{"type": "Code", "code": "2-2", "system": {"name": "LOINC"}}]},
    ]}) == {CodeKey(LOINC, "1-1"), CodeKey(LOINC, "2-2")}
    assert obs_codes({"type": "CodeRef", "name": "Missing"}) is None
    assert obs_codes({"type": "ExpressionRef", "name": "Self"}) is None  # a cycle ends, unresolved
    assert obs_codes({"type": "List", "element": [{"type": "CodeRef", "name": "A"}, {"type": "Null"}]}) is None
    # Retrieves of other models are not FHIR requirements.
    assert "Other" not in elm.data_requirements(["L"], {"L": library("L", None)})
