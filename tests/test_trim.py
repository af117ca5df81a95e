"""Bundle trimming: the engine sees only what the libraries retrieve, and answers the same.

The end-to-end test runs a library (translated here with the real translator and the project's
FHIRHelpers) on one patient with and without 1,000 irrelevant Observations; the unit tests pin
the keep/drop rules of `trim_bundle`.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from cds.engine import Engine, elm
from cds.engine.elm import CodeKey, TypeRequirement
from cds.engine.translator import Translator
from cds.engine.trim import trim_bundle
from cds.paths import ELM_DIR, RULES_DIR

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
AT = "2026-03-01T09:00:00Z"

TRIM_CQL = """
library TrimProbe version '1'

using FHIR version '4.0.1'

include FHIRHelpers version '4.0.1'

codesystem "LOINC": 'http://loinc.org'
codesystem "SNOMEDCT": 'http://snomed.info/sct'

code "Creatinine": '2160-0' from "LOINC" display 'Creatinine [Mass/volume] in Serum or Plasma'
code "Creatinine Molar": '14682-9' from "LOINC" display 'Creatinine [Moles/volume] in Serum or Plasma'
code "SLE": '55464009' from "SNOMEDCT" display 'Systemic lupus erythematosus'

define "Creatinine Codes": { "Creatinine", "Creatinine Molar" }

context Patient

define "Creatinine Observations": [Observation: "Creatinine Codes"]
define "Mass Creatinine": [Observation: "Creatinine"]
define "Final Creatinine":
  "Creatinine Observations" O where O.status = 'final'
define "Latest Creatinine":
  Last("Final Creatinine" O sort by FHIRHelpers.ToDateTime(effective as FHIR.dateTime))
define "Latest Creatinine Date": FHIRHelpers.ToDateTime("Latest Creatinine".effective as FHIR.dateTime)
define "Latest Creatinine Value": "Latest Creatinine".value as FHIR.Quantity
define "Creatinine Above 1.5": ("Latest Creatinine".value as FHIR.Quantity) > 1.5 'mg/dL'
define "Creatinine In 90 Days":
  "Final Creatinine" O
    where FHIRHelpers.ToDateTime(O.effective as FHIR.dateTime) during Interval[Now() - 90 days, Now()]
    return O.id.value
define "Creatinine Count": Count("Creatinine Observations")
define "Mass Creatinine Count": Count("Mass Creatinine")
define "SLE Conditions": [Condition: "SLE"]
define "Has SLE": exists "SLE Conditions"
define "SLE Onset":
  Min("SLE Conditions" C return FHIRHelpers.ToDateTime(C.onset as FHIR.dateTime))
define "Eligible": "Has SLE" and not "Creatinine Above 1.5"
"""

# LOINC codes of everyday results the library does not ask for.
NOISE_CODES = ["718-7", "777-3", "6690-2", "751-8", "1920-8", "1742-6", "1975-2", "2345-7", "2823-3",
               "2951-2", "17861-6", "2885-2", "1751-7", "3094-0", "4548-4", "2093-3", "8867-4", "8480-6"]


def observation(oid: str, code: str, value: float, unit: str, when: str, status: str = "final") -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": status,
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def condition(cid: str, system: str, code: str, onset: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "code": {"coding": [{"system": system, "code": code}]}, "onsetDateTime": onset}


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def patient_record() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1990-04-02"},
        observation("cr-1", "2160-0", 1.1, "mg/dL", "2025-08-01T08:00:00Z"),
        observation("cr-2", "14682-9", 97.0, "umol/L", "2026-01-15T08:00:00Z"),
        observation("cr-3", "2160-0", 1.3, "mg/dL", "2026-02-10T08:00:00Z"),
        observation("cr-4", "2160-0", 2.9, "mg/dL", "2026-02-20T08:00:00Z", status="entered-in-error"),
        condition("sle", SNOMED, "55464009", "2019-05-01"),
    ]


def noise(n: int) -> list[dict[str, Any]]:
    rng = random.Random(20260301)
    out = []
    for i in range(n):
        day = rng.randrange(1, 28)
        month = rng.randrange(1, 13)
        out.append(observation(f"noise-{i}", rng.choice(NOISE_CODES), round(rng.uniform(0.1, 300), 1), "1",
                               f"2025-{month:02d}-{day:02d}T07:30:00Z"))
    # Kinds of resource the library never retrieves.
    out.append(condition("ra", SNOMED, "69896004", "2018-01-01"))
    out.append({"resourceType": "Procedure", "id": "proc-1", "status": "completed",
                "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": SNOMED, "code": "80146002"}]}})
    out.append({"resourceType": "MedicationRequest", "id": "mr-1", "status": "active", "intent": "order",
                "subject": {"reference": "Patient/p1"},
                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "8640"}]}})
    return out


def interleave(record: list[dict[str, Any]], extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`extra` scattered through `record`, the record's own order kept (lists keep bundle order)."""
    size = len(record) + len(extra)
    at = set(random.Random(7).sample(range(size), len(record)))
    rec, ext = iter(record), iter(extra)
    return [next(rec) if i in at else next(ext) for i in range(size)]


@pytest.fixture(scope="module")
def engine() -> Any:
    libraries = {}
    sources = [TRIM_CQL]
    compiled = ELM_DIR / "FHIRHelpers.json"  # the committed ELM (a build test keeps it current)
    if compiled.exists():
        libraries["FHIRHelpers"] = json.loads(compiled.read_text(encoding="utf-8"))
    else:
        sources.append((RULES_DIR / "FHIRHelpers.cql").read_text(encoding="utf-8"))
    with Translator([RULES_DIR]) as translator:
        for cql in sources:
            t = translator.translate(cql)
            assert t.ok and t.elm is not None, [m.format(t.library) for m in t.errors]
            libraries[elm.library_name(t.elm)] = t.elm
    with Engine(libraries, pool_size=1) as eng:
        yield eng


def test_irrelevant_observations_change_nothing_and_are_trimmed(engine: Engine) -> None:
    clean = bundle(patient_record())
    noisy = bundle(interleave(patient_record(), noise(1000)))

    expected = engine.evaluate(clean, ["TrimProbe"], AT)
    got = engine.evaluate(noisy, ["TrimProbe"], AT)
    assert got.raw == expected.raw
    assert got.values == expected.values

    # The library really read the record (a vacuous library would pass the comparison too).
    values = expected["TrimProbe"]
    assert values["Creatinine Count"] == 4 and values["Mass Creatinine Count"] == 3
    assert values["Latest Creatinine"].json["id"] == "cr-3"
    assert values["Creatinine In 90 Days"] == ["cr-2", "cr-3"]
    assert values["Creatinine Above 1.5"] is False
    assert values["Has SLE"] is True and values["Eligible"] is True
    assert values["SLE Onset"].text.startswith("2019-05-01")

    # The trimmed bundle held none of the noise, and the engine agrees without trimming.
    requirements = engine.requirements(["TrimProbe"])
    assert requirements["Observation"].codes == {CodeKey(LOINC, "2160-0"), CodeKey(LOINC, "14682-9")}
    assert requirements["Condition"].codes == {CodeKey(SNOMED, "55464009")}
    trimmed = trim_bundle(noisy, requirements)
    kept = sorted(e["resource"]["id"] for e in trimmed["entry"])
    assert kept == sorted(r["id"] for r in patient_record())
    assert len(noisy["entry"]) == len(patient_record()) + 1003
    engine.trim = False
    try:
        untrimmed = engine.evaluate(noisy, ["TrimProbe"], AT)
    finally:
        engine.trim = True
    assert untrimmed.raw == expected.raw


# -- trim_bundle rules ------------------------------------------------------------------------


def req(resource_type: str, codes: set[CodeKey] | None, *paths: str) -> TypeRequirement:
    return TypeRequirement(resource_type, set(paths), codes)


PATIENT = {"resourceType": "Patient", "id": "p1"}
CREATININE = {CodeKey(LOINC, "2160-0")}
PREDNISONE = {CodeKey(RXNORM, "8640")}


def kept_ids(resources: list[dict[str, Any]], requirements: dict[str, TypeRequirement]) -> list[str]:
    return [e["resource"]["id"] for e in trim_bundle(bundle(resources), requirements)["entry"]]


def test_keeps_patient_and_drops_types_nobody_retrieves() -> None:
    resources = [
        PATIENT,
        {"resourceType": "Procedure", "id": "proc", "code": {"coding": [{"system": SNOMED, "code": "1"}]}},
        {"resourceType": "Encounter", "id": "enc"},
        observation("cr", "2160-0", 1.0, "mg/dL", "2026-01-01"),
    ]
    assert kept_ids(resources, {}) == ["p1"]
    assert kept_ids(resources, {"Observation": req("Observation", CREATININE, "code")}) == ["p1", "cr"]
    assert kept_ids(resources, {"Encounter": req("Encounter", None)}) == ["p1", "enc"]


def test_filters_by_code_on_the_retrieved_path() -> None:
    resources = [
        PATIENT,
        observation("cr", "2160-0", 1.0, "mg/dL", "2026-01-01"),
        observation("hb", "718-7", 12.0, "g/dL", "2026-01-01"),
        {**observation("cr-other-system", "2160-0", 1.0, "mg/dL", "2026-01-01"),
         "code": {"coding": [{"system": "http://example.org/local", "code": "2160-0"}]}},
        {**observation("cr-second-coding", "2160-0", 1.0, "mg/dL", "2026-01-01"),
         "code": {"coding": [{"system": "http://example.org/local", "code": "CREA"},
                             {"system": LOINC, "code": "2160-0"}]}},
        {**observation("text-only", "2160-0", 1.0, "mg/dL", "2026-01-01"), "code": {"text": "creatinine"}},
    ]
    assert kept_ids(resources, {"Observation": req("Observation", CREATININE, "code")}) == [
        "p1", "cr", "cr-second-coding"]
    # All of a type when some retrieve of it has no static code filter.
    assert len(kept_ids(resources, {"Observation": req("Observation", None)})) == len(resources)


def test_keeps_what_cannot_be_judged_by_its_code() -> None:
    resources = [
        PATIENT,
        {"resourceType": "MedicationRequest", "id": "by-reference",
         "medicationReference": {"reference": "Medication/m1"}},
        {"resourceType": "MedicationRequest", "id": "prednisone",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "8640"}]}},
        {"resourceType": "MedicationRequest", "id": "aspirin",
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1191"}]}},
        {"resourceType": "MedicationRequest", "id": "no-medication"},
        {"resourceType": "Observation", "id": "no-code"},
        {"resourceType": "Observation", "id": "odd-code", "code": ["not", "a", "concept"]},
    ]
    requirements = {
        "MedicationRequest": req("MedicationRequest", PREDNISONE, "medication"),
        "Observation": req("Observation", CREATININE, "code"),
    }
    assert kept_ids(resources, requirements) == [
        "p1", "by-reference", "prednisone", "no-medication", "no-code", "odd-code"]


def test_any_code_path_of_a_type_may_keep_a_resource() -> None:
    resources = [
        PATIENT,
        {"resourceType": "Condition", "id": "by-code", "code": {"coding": [{"system": SNOMED, "code": "55464009"}]}},
        {"resourceType": "Condition", "id": "by-category", "code": {"coding": [{"system": SNOMED, "code": "1"}]},
         "category": [{"coding": [{"system": SNOMED, "code": "439401001"}]}]},
        {"resourceType": "Condition", "id": "neither", "code": {"coding": [{"system": SNOMED, "code": "1"}]},
         "category": [{"coding": [{"system": SNOMED, "code": "2"}]}]},
    ]
    requirements = {"Condition": req("Condition", {CodeKey(SNOMED, "55464009"), CodeKey(SNOMED, "439401001")},
                                     "code", "category")}
    assert kept_ids(resources, requirements) == ["p1", "by-code", "by-category"]


def test_output_is_a_new_collection_bundle_and_input_is_untouched() -> None:
    original = {"resourceType": "Bundle", "type": "searchset", "total": 3, "entry": [
        {"fullUrl": "urn:uuid:1", "resource": PATIENT, "search": {"mode": "match"}},
        {"fullUrl": "urn:uuid:2"},  # no resource
        "not an entry",
        {"resource": observation("hb", "718-7", 12.0, "g/dL", "2026-01-01")},
    ]}
    before = copy.deepcopy(original)
    out = trim_bundle(original, {"Observation": req("Observation", CREATININE, "code")})
    assert out == {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": PATIENT}]}
    assert original == before
