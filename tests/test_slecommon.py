"""rules/SLECommon.cql, executed: every shared function on hand-made FHIR data.

One test library (`SLECommonTest`, below) calls the SLECommon functions from its defines; it is
translated once against rules/ and run by one engine (one Node worker) for the whole module.
Each scenario is a small patient Bundle evaluated once at EVAL_AT (2026-11-26T09:00Z) and
cached; the tests read `result.raw["SLECommonTest"][<define>]`, the engine's JSON.

Reference values are computed here, independently of the CQL, from the published equations:
- CKD-EPI 2021 (race-free creatinine equation): Inker LA et al., N Engl J Med 2021;385:1737-49.
- Bedside Schwartz: Schwartz GJ et al., J Am Soc Nephrol 2009;20:629-37 (0.413 x height cm / Scr).
- Cockcroft-Gault: Cockcroft DW, Gault MH. Nephron 1976;16:31-41.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from cds.engine import Engine
from cds.synthetic import fhir as F

from .conftest import EVAL_AT, engine_with

LIB = "SLECommonTest"
P = "p"

TEST_LIBRARY = """
library SLECommonTest version '1'

using FHIR version '4.0.1'

include FHIRHelpers version '4.0.1'
include SLECommon version '1.0.0' called SLE

codesystem "Local": 'https://trial-cds.dev/codes'

context Patient

/* Observations: status, time, latest */
define "Final Refs": (SLE."Final"(SLE."Creatinine Observations")) O return SLE."Reference"(O)
define "Latest Ref": SLE."Reference"(SLE."Latest"(SLE."Creatinine Observations"))
define "Latest In Window Ref": SLE."Reference"(SLE."Latest In Window"(SLE."Creatinine Observations", SLE."Lab Window"))
define "Latest In 7 Days Ref": SLE."Reference"(SLE."Latest In Window"(SLE."Creatinine Observations", 7 days))
define "Observation Times": (SLE."Creatinine Observations") O
  return Tuple { ref: SLE."Reference"(O), at: SLE."Effective"(O), current: SLE."Is Current"(O, SLE."Lab Window"),
    date: SLE."Date Text"(SLE."Effective"(O)), value: SLE."Value Text"(O), unit: SLE."Unit Text"(O),
    comparator: SLE."Comparator"(O) }

/* Thresholds */
define "Hemoglobin Obs": [Observation: SLE."Hemoglobin Codes"]
define "Leukocyte Obs": [Observation: SLE."Leukocyte Codes"]
define "CD19 Obs": [Observation: SLE."CD19 Count Codes"]
define "Bilirubin Obs": [Observation: SLE."Bilirubin Codes"]
define "ALT Obs": [Observation: SLE."ALT Codes"]
define "AST Obs": [Observation: SLE."AST Codes"]
define "HBsAg Obs": [Observation: SLE."HBsAg Codes"]
define "HBV DNA Obs": [Observation: SLE."HBV DNA Codes"]

define "Creatinine >2.5": SLE."Threshold"(SLE."Creatinine Observations", 'creatinine', SLE."Lab Window", '>', 2.5 'mg/dL', SLE."Creatinine Codes")
define "Hemoglobin >=85": SLE."Threshold"("Hemoglobin Obs", 'hemoglobin', SLE."Lab Window", '>=', 85 'g/L', SLE."Hemoglobin Codes")
define "Leukocytes >=2.5": SLE."Threshold"("Leukocyte Obs", 'cell-count', SLE."Lab Window", '>=', 2.5 '10*9/L', SLE."Leukocyte Codes")
define "CD19 >0": SLE."Threshold"("CD19 Obs", 'cd19-count', SLE."Lab Window", '>', 0 '/uL', SLE."CD19 Count Codes")
define "Compare": Tuple {
  gt_true: SLE."Compare"(3.0, '>', 2.5), gt_equal: SLE."Compare"(2.5, '>', 2.5),
  ge_equal: SLE."Compare"(2.5, '>=', 2.5), ge_false: SLE."Compare"(2.4, '>=', 2.5),
  lt_true: SLE."Compare"(2.4, '<', 2.5), lt_equal: SLE."Compare"(2.5, '<', 2.5),
  le_equal: SLE."Compare"(2.5, '<=', 2.5), le_false: SLE."Compare"(2.6, '<=', 2.5),
  eq_true: SLE."Compare"(2.5, '=', 2.5), eq_false: SLE."Compare"(2.6, '=', 2.5),
  unknown_op: SLE."Compare"(2.5, '!=', 2.5), null_value: SLE."Compare"(null, '>', 2.5)
}

/* Units */
define "Canonical Creatinine": (SLE."Creatinine Observations") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'creatinine') }
define "Canonical Bilirubin": ("Bilirubin Obs") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'bilirubin') }
define "Canonical Hemoglobin": ("Hemoglobin Obs") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'hemoglobin') }
define "Canonical Leukocytes": ("Leukocyte Obs") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'cell-count') }
define "Canonical CD19": ("CD19 Obs") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'cd19-count') }
define "Canonical Weight": (SLE."Weight Observations") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'weight') }
define "Canonical Height": (SLE."Height Observations") O return Tuple { ref: SLE."Reference"(O), q: SLE."Canonical Value"(O, 'height') }
define "Canonical Edge": Tuple {
  null_quantity: SLE."Canonical"(null, 'creatinine'),
  unknown_analyte: SLE."Canonical"(1.0 'mg/dL', 'glucose'),
  unit_of_other_analyte: SLE."Canonical"(1.0 'g/L', 'creatinine')
}

/* ULN */
define "ALT ULN": SLE."ULN"(SLE."Latest"("ALT Obs"), 'alt')
define "ALT Times ULN": SLE."Times ULN"(SLE."Latest"("ALT Obs"), 'alt')
define "ALT <3x ULN": SLE."ULN Threshold"("ALT Obs", 'alt', SLE."Lab Window", '<', 3.0, SLE."ALT Codes")
define "AST ULN": SLE."ULN"(SLE."Latest"("AST Obs"), 'ast')
define "Bilirubin ULN": SLE."ULN"(SLE."Latest"("Bilirubin Obs"), 'bilirubin')
define "Bilirubin Times ULN": SLE."Times ULN"(SLE."Latest"("Bilirubin Obs"), 'bilirubin')
define "Bilirubin <=2x ULN": SLE."ULN Threshold"("Bilirubin Obs", 'bilirubin', SLE."Lab Window", '<=', 2.0, SLE."Bilirubin Codes")
define "HBV DNA ULN": SLE."ULN"(SLE."Latest"("HBV DNA Obs"), 'hbv-dna')
define "ULN Of Null": SLE."ULN"(null, 'alt')
define "Stale Note": SLE."Stale Note"(SLE."Latest"(SLE."Creatinine Observations"), SLE."Lab Window")

/* Qualitative */
define "Readings": ("HBsAg Obs" union "HBV DNA Obs") O return Tuple {
  ref: SLE."Reference"(O), value: SLE."Value Reading"(O), interpretation: SLE."Interpretation Reading"(O),
  positive: SLE."Positive"(O), valueText: SLE."Value Text"(O), unitText: SLE."Unit Text"(O) }
define "HBsAg Positive": SLE."Qualitative"("HBsAg Obs", SLE."Serology Window", SLE."HBsAg Codes")
define "Combine Readings": Tuple {
  tt: SLE."Combine Readings"(true, true), tf: SLE."Combine Readings"(true, false), ft: SLE."Combine Readings"(false, true),
  ff: SLE."Combine Readings"(false, false), tn: SLE."Combine Readings"(true, null), nf: SLE."Combine Readings"(null, false),
  nn: SLE."Combine Readings"(null, null) }

/* Patient */
define "Age In Years": SLE."Age In Years"
define "Birth Date": SLE."Birth Date"
define "Sex": SLE."Sex"
define "Is Female": SLE."Is Female"
define "Patient Reference": SLE."Patient Reference"
define "Age 18 to 70": SLE."Age Criterion"(18, 70)
define "Age 18 or more": SLE."Age Criterion"(18, null)

/* Diagnoses */
define "SLE Diagnosis": SLE."SLE Diagnosis"
define "Has SLE": SLE."Has SLE"
define "SLE Onset": SLE."SLE Onset"
define "SLE Duration In Weeks": SLE."SLE Duration In Weeks"
define "Has Drug-induced Lupus Only": SLE."Has Drug-induced Lupus Only"
define "Condition Facts": (SLE."All Conditions") C return Tuple {
  ref: SLE."Condition Reference"(C), clinical: SLE."Clinical Status"(C), verification: SLE."Verification Status"(C),
  notRefuted: SLE."Not Refuted"(C), active: SLE."Is Active"(C), possiblyActive: SLE."Is Possibly Active"(C),
  onset: SLE."Onset"(C), display: SLE."Condition Display"(C), malignancy: SLE."Is Malignancy"(C),
  skinPrefix: SLE."Has ICD Prefix"(C, { 'C44', 'D04' }), breastCode: SLE."Has Code In"(C, SLE."Breast Cancer Codes") }
define "Lupus Nephritis": SLE."Condition Criterion"([Condition: SLE."Lupus Nephritis Codes"], 'lupus nephritis')
define "CNS Lupus 60 days": SLE."Recent Condition Criterion"([Condition: SLE."CNS Lupus Codes"], 60 days, 'CNS lupus')
define "Malignancy": SLE."Condition Criterion"(SLE."Malignancy Conditions", 'malignancy')

/* Procedures, immunizations */
define "HSCT Procedures": [Procedure: SLE."HSCT Codes"]
define "HSCT": SLE."Procedure Criterion"("HSCT Procedures", 'HSCT')
define "HSCT 3 months": SLE."Recent Procedure Criterion"("HSCT Procedures", 3 months, 'HSCT')
define "Procedure Times": ("HSCT Procedures") P return Tuple { ref: 'Procedure/' + P.id, at: SLE."Performed"(P) }
define "Live Vaccines": [Immunization: SLE."Live Vaccine Codes"]
define "Live vaccine 4 weeks": SLE."Recent Immunization Criterion"("Live Vaccines", 4 weeks, 'live vaccine')

/* eGFR, creatinine clearance */
define "eGFR": SLE."eGFR"
define "Derived eGFR Value": SLE."Derived eGFR Value"
define "eGFR >=30": SLE."eGFR Criterion"('>=', 30.0)
define "Creatinine mg/dL": SLE."Creatinine mg/dL"
define "Height cm": SLE."Height cm"
define "Weight kg": SLE."Weight kg"
define "Creatinine Clearance": SLE."Creatinine Clearance"
define "Derived CrCl Value": SLE."Derived CrCl Value"
define "CrCl >=30": SLE."CrCl Criterion"('>=', 30.0)
define "Formulas": Tuple {
  ckd_female_50: SLE."CKD-EPI 2021"(1.0, 50, true),
  ckd_male_60: SLE."CKD-EPI 2021"(1.2, 60, false),
  ckd_female_low: SLE."CKD-EPI 2021"(0.5, 40, true),
  ckd_null_sex: SLE."CKD-EPI 2021"(1.0, 50, null),
  schwartz: SLE."Bedside Schwartz"(120.0, 0.5),
  schwartz_zero: SLE."Bedside Schwartz"(120.0, 0.0),
  cg_male: SLE."Cockcroft-Gault"(40, 72.0, 1.0, false),
  cg_female: SLE."Cockcroft-Gault"(40, 72.0, 1.0, true),
  cg_no_weight: SLE."Cockcroft-Gault"(40, null, 1.0, true)
}

/* Criterion logic */
define "M": SLE."Met"(SLE."Note"('m'))
define "N": SLE."Not Met"(SLE."Note"('n'))
define "U": SLE."Unknown"(SLE."Note"('u'), { Code 'u1' from "Local", Code 'u2' from "Local" })
define "V": SLE."Unknown"(SLE."Note"('v'), { Code 'u2' from "Local", Code 'v1' from "Local" })
define "All Of": Tuple {
  MM: SLE."All Of"({ "M", "M" }), MN: SLE."All Of"({ "M", "N" }), MU: SLE."All Of"({ "M", "U" }),
  NM: SLE."All Of"({ "N", "M" }), NN: SLE."All Of"({ "N", "N" }), NU: SLE."All Of"({ "N", "U" }),
  UM: SLE."All Of"({ "U", "M" }), UN: SLE."All Of"({ "U", "N" }), UU: SLE."All Of"({ "U", "V" }) }
define "Any Of": Tuple {
  MM: SLE."Any Of"({ "M", "M" }), MN: SLE."Any Of"({ "M", "N" }), MU: SLE."Any Of"({ "M", "U" }),
  NM: SLE."Any Of"({ "N", "M" }), NN: SLE."Any Of"({ "N", "N" }), NU: SLE."Any Of"({ "N", "U" }),
  UM: SLE."Any Of"({ "U", "M" }), UN: SLE."Any Of"({ "U", "N" }), UU: SLE."Any Of"({ "U", "V" }) }
define "Negate": Tuple { M: SLE."Negate"("M"), N: SLE."Negate"("N"), U: SLE."Negate"("U") }
define "Part": Tuple {
  M: SLE."Part"('ALT', "M"), U: SLE."Part"('HBV', "U"),
  no_evidence: SLE."Part"('consent', SLE."Met"(SLE."No Evidence"())),
  null_note: SLE."Part"('x', SLE."Met"({ SLE."Evidence"('Observation/1', '5', 'U/L', null, null) })) }
define "Review": SLE."Review"('informed consent')
define "From Boolean": Tuple {
  T: SLE."From Boolean"(true, SLE."Note"('t'), { Code 'c' from "Local" }),
  F: SLE."From Boolean"(false, SLE."Note"('f'), { Code 'c' from "Local" }),
  N: SLE."From Boolean"(null, SLE."Note"('n'), { Code 'c' from "Local" }) }
define "Result Nulls": SLE."Result"('met', null, null)

/* Medications */
define "GC Requests": [MedicationRequest]
define "GC Statements": [MedicationStatement]
define "GC Exposures": SLE."Exposures"("GC Requests", "GC Statements", SLE."Glucocorticoid Codes")
define "GC Evidence": ("GC Exposures") E return SLE."Exposure Evidence"(E, 'glucocorticoid')
define "GC Prednisone Equivalent": ("GC Exposures") E
  return Tuple { reference: E.reference, mg: SLE."Prednisone Equivalent mg"(E.ingredient, E.dailyDoseMg) }
define "Statement Doses": ("GC Statements") S return Tuple { ref: 'MedicationStatement/' + S.id, mg: SLE."Daily Dose mg"(S.dosage) }
define "Request Doses": ("GC Requests") M return Tuple { ref: 'MedicationRequest/' + M.id, mg: SLE."Daily Dose mg"(M.dosageInstruction) }
define "IS Exposures": SLE."Exposures"([MedicationRequest], [MedicationStatement], SLE."Conventional Immunosuppressant Codes")
"""


# -- running scenarios -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(translator, compiled_rules) -> Iterator[Engine]:
    eng = engine_with(translator, compiled_rules, [TEST_LIBRARY])
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture(scope="module")
def run(engine: Engine) -> Callable[[str], dict[str, Any]]:
    """run(scenario) -> every define of SLECommonTest for that scenario's Bundle (cached)."""
    cache: dict[str, dict[str, Any]] = {}

    def _run(name: str) -> dict[str, Any]:
        if name not in cache:
            bundle = F.bundle(SCENARIOS[name](), bid=name)
            cache[name] = engine.evaluate(bundle, [LIB], EVAL_AT).raw[LIB]
        return cache[name]

    return _run


def ago(**kw: float) -> datetime:
    return EVAL_AT - timedelta(**kw)


def text(value: dict[str, Any] | None) -> str | None:
    """The engine's ISO text of a DateTime/Date value."""
    return None if value is None else value["value"]


def utc(moment: datetime | date) -> str:
    """How the engine prints a UTC date-time built by the fhir builders (second precision)."""
    if isinstance(moment, datetime):
        return moment.astimezone(UTC).isoformat(timespec="seconds")
    return moment.isoformat()


def notes(result: dict[str, Any]) -> list[str]:
    return [e["note"] for e in result["evidence"]]


def missing(result: dict[str, Any]) -> list[str]:
    return [m["code"] for m in result["missing"]]


def by_first(rows: list[tuple[Any, ...]]) -> list[Any]:
    """Parameter sets named after their first value (a scenario, resource id or reference)."""
    def name(value: Any) -> str:
        text_ = str(value)
        return text_.split("/", 1)[1] if text_[:1].isupper() and "/" in text_ else text_  # "Observation/x" -> "x"
    return [pytest.param(*row, id=name(row[0])) for row in rows]


def by_ref(rows: list[dict[str, Any]], key: str = "ref") -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in rows}


def obs(code: str, when: datetime | date | None, rid: str, **kw: Any) -> dict[str, Any]:
    return F.observation(P, "LOINC", code, when, rid=rid, **kw)


def with_effective(resource: dict[str, Any], **effective: Any) -> dict[str, Any]:
    resource.pop("effectiveDateTime", None)
    resource.update(effective)
    return resource


def person(birth: date | None = date(1976, 5, 1), gender: str | None = "female") -> dict[str, Any]:
    return F.patient(P, birth, gender)


CREATININE_CODES = ["2160-0", "14682-9", "77140-2"]
EGFR_CODES = ["98979-8", "62238-1", "69405-9"]
HEIGHT = "8302-2"
WEIGHT = "29463-7"


# -- scenarios: one small patient record each ----------------------------------------------------

def _creatinine(value: float, unit: str = "mg/dL", days: float = 10, rid: str = "cr", **kw: Any) -> dict[str, Any]:
    return obs("2160-0", ago(days=days), rid, value=value, unit=unit, **kw)


def _status_mix() -> list[dict[str, Any]]:
    return [
        person(),
        _creatinine(1.0, days=10, rid="final", status="final"),
        _creatinine(1.0, days=20, rid="amended", status="amended"),
        _creatinine(1.0, days=30, rid="corrected", status="corrected"),
        _creatinine(1.0, days=1, rid="preliminary", status="preliminary"),
        _creatinine(1.0, days=1, rid="registered", status="registered"),
        _creatinine(1.0, days=1, rid="entered-in-error", status="entered-in-error"),
        _creatinine(1.0, days=1, rid="cancelled", status="cancelled"),
        _creatinine(1.0, days=-1, rid="future-day"),
        _creatinine(1.0, days=-1 / 86400, rid="future-second"),
        obs("2160-0", None, "undated", value=1.0, unit="mg/dL"),
        with_effective(_creatinine(1.0, rid="today-date-only"), effectiveDateTime="2026-11-26"),
        with_effective(_creatinine(1.0, rid="period"),
                       effectivePeriod={"start": "2026-11-01T08:00:00Z", "end": "2026-11-02T08:00:00Z"}),
        with_effective(_creatinine(1.0, rid="period-open"), effectivePeriod={"start": "2026-11-03T08:00:00Z"}),
        with_effective(_creatinine(1.0, rid="instant"), effectiveInstant="2026-11-04T10:00:00.123Z"),
    ]


# a: 08:00+08:00 = 00:00Z; b: 01:00Z; c: 23:30-05:00 the day before = 04:30Z, the latest instant.
# As text, a sorts last ("...T08" > "...T01" > "2026-11-19...").
_OFFSET_TIMES = {"a": "2026-11-20T08:00:00+08:00", "b": "2026-11-20T01:00:00Z", "c": "2026-11-19T23:30:00-05:00"}
_OFFSET_VALUES = {"a": 1.0, "b": 2.0, "c": 3.0}


def _offsets(order: str) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [person()] + [
        with_effective(_creatinine(_OFFSET_VALUES[k], rid=k), effectiveDateTime=_OFFSET_TIMES[k]) for k in order]


_UNITS = [
    # (define, code, rid, value, unit, expected canonical value or None, canonical unit)
    ("Canonical Creatinine", "2160-0", "cr-mgdl", 1.3, "mg/dL", 1.3, "mg/dL"),
    ("Canonical Creatinine", "2160-0", "cr-umol", 88.4, "umol/L", 1.0, "mg/dL"),
    ("Canonical Creatinine", "14682-9", "cr-umol-molar-code", 176.8, "umol/L", 2.0, "mg/dL"),
    ("Canonical Creatinine", "2160-0", "cr-mmol-unknown", 0.1, "mmol/L", None, None),
    ("Canonical Bilirubin", "1975-2", "bili-mgdl", 1.5, "mg/dL", 1.5, "mg/dL"),
    ("Canonical Bilirubin", "14631-6", "bili-umol", 34.2, "umol/L", 2.0, "mg/dL"),
    ("Canonical Bilirubin", "1975-2", "bili-percent-unknown", 2.0, "%", None, None),
    ("Canonical Hemoglobin", "718-7", "hb-gl", 95, "g/L", 95, "g/L"),
    ("Canonical Hemoglobin", "718-7", "hb-gdl", 9.5, "g/dL", 95, "g/L"),
    ("Canonical Hemoglobin", "718-7", "hb-mmol-unknown", 5.9, "mmol/L", None, None),
    ("Canonical Leukocytes", "6690-2", "wbc-10*9/L", 4.2, "10*9/L", 4.2, "10*9/L"),
    ("Canonical Leukocytes", "6690-2", "wbc-10*3/uL", 4.2, "10*3/uL", 4.2, "10*9/L"),
    ("Canonical Leukocytes", "26464-8", "wbc-per-uL", 4200, "/uL", 4.2, "10*9/L"),
    ("Canonical Leukocytes", "6690-2", "wbc-10*6/L-unknown", 4200, "10*6/L", None, None),
    ("Canonical CD19", "8116-6", "cd19-per-uL", 150, "/uL", 150, "/uL"),
    ("Canonical CD19", "8116-6", "cd19-10*9/L", 0.15, "10*9/L", 150, "/uL"),
    ("Canonical CD19", "8116-6", "cd19-10*3/uL", 0.15, "10*3/uL", 150, "/uL"),
    ("Canonical CD19", "8116-6", "cd19-percent-unknown", 12, "%", None, None),
    ("Canonical Weight", "29463-7", "wt-kg", 70, "kg", 70, "kg"),
    ("Canonical Weight", "29463-7", "wt-lb", 154, "[lb_av]", 154 * 0.45359237, "kg"),
    ("Canonical Weight", "29463-7", "wt-stone-unknown", 11, "[stone_av]", None, None),
    ("Canonical Height", "8302-2", "ht-cm", 152, "cm", 152, "cm"),
    ("Canonical Height", "8302-2", "ht-in", 60, "[in_i]", 152.4, "cm"),
    ("Canonical Height", "8302-2", "ht-m", 1.52, "m", 152, "cm"),
    ("Canonical Height", "8302-2", "ht-ft-unknown", 5, "[ft_i]", None, None),
]


def _units() -> list[dict[str, Any]]:
    out = [person()]
    for _define, code, rid, value, unit, *_ in _UNITS:
        out.append(obs(code, ago(days=5), rid, value=value, unit=unit))
    # A lab that sends only the printable unit (no UCUM system/code).
    out.append({**obs("2160-0", ago(days=5), "cr-micro-sign-text-only"), "valueQuantity": {"value": 88.4, "unit": "µmol/L"}})
    return out


H, V = "5196-1", "42595-9"  # HBsAg (qualitative), HBV DNA (quantitative)
_READINGS = [
    # (rid, observation kwargs, code, value reading, interpretation reading, positive)
    ("snomed-positive", dict(value_code=("SNOMEDCT", "10828004")), H, True, None, True),
    ("snomed-negative", dict(value_code=("SNOMEDCT", "260385009")), H, False, None, False),
    ("snomed-detected", dict(value_code=("SNOMEDCT", "260373001")), H, True, None, True),
    ("snomed-not-detected", dict(value_code=("SNOMEDCT", "260415000")), H, False, None, False),
    ("snomed-other-concept", dict(value_code=("SNOMEDCT", "419984006")), H, None, None, None),
    ("interpretation-POS", dict(interpretation="POS"), H, None, True, True),
    ("interpretation-NEG", dict(interpretation="NEG"), H, None, False, False),
    ("interpretation-DET", dict(interpretation="DET"), H, None, True, True),
    ("interpretation-ND", dict(interpretation="ND"), H, None, False, False),
    # H: above the lab's range, which for a presence test (serology, viral load) is positive.
    ("interpretation-H-only", dict(interpretation="H"), H, None, True, True),
    ("string-Positive", dict(value_string="Positive"), H, True, None, True),
    ("string-negative", dict(value_string="negative"), H, False, None, False),
    ("string-Not-detected", dict(value_string="Not detected"), H, False, None, False),
    ("string-<10", dict(value_string="<10"), H, False, None, False),
    ("string-other-text", dict(value_string="weakly reactive"), H, None, None, None),
    ("quantity-comparator-<", dict(value=10, unit="[IU]/mL", comparator="<"), V, False, None, False),
    ("quantity-above-range", dict(value=230000, unit="[IU]/mL", ref_high=10), V, True, None, True),
    ("quantity-within-range", dict(value=5, unit="[IU]/mL", ref_high=10), V, False, None, False),
    ("quantity-no-range", dict(value=50, unit="[IU]/mL"), V, None, None, None),
    # Reported above the assay's range (">50"): detected.
    ("quantity-comparator->", dict(value=50, unit="[IU]/mL", comparator=">"), V, True, None, True),
    ("string->1.7x10^8", dict(value_string=">1.7x10^8"), V, True, None, True),
    ("string-Reactive", dict(value_string="Reactive"), H, True, None, True),
    ("string-Non-reactive", dict(value_string="Non-reactive"), H, False, None, False),
    ("negative-value-positive-interpretation",
     dict(value_code=("SNOMEDCT", "260385009"), interpretation="POS"), H, False, True, None),
    ("positive-value-negative-interpretation",
     dict(value_code=("SNOMEDCT", "10828004"), interpretation="NEG"), H, True, False, None),
    ("string-<10-positive-interpretation", dict(value_string="<10", interpretation="POS"), H, False, True, None),
    ("positive-value-positive-interpretation",
     dict(value_code=("SNOMEDCT", "10828004"), interpretation="POS"), H, True, True, True),
]


def _readings() -> list[dict[str, Any]]:
    out = [person()]
    for rid, kw, code, *_ in _READINGS:
        out.append(obs(code, ago(days=5), rid, **kw))
    # The same SNOMED CT answers as other systems send them: another display, or none.
    pos = obs(H, ago(days=5), "snomed-positive-other-display")
    pos["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": "10828004",
                                               "display": "Positive (qualifier value)"}]}
    neg = obs(H, ago(days=5), "snomed-negative-no-display")
    neg["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]}
    return out + [pos, neg]


def _hbsag(**kw: Any) -> Callable[[], list[dict[str, Any]]]:
    days = kw.pop("days", 30)
    return lambda: [person(), obs(H, ago(days=days), "hbsag", **kw)]


def _cond(system: str, code: str, rid: str, onset: datetime | date | None = None, **kw: Any) -> dict[str, Any]:
    return F.condition(P, system, code, onset if onset is not None else ago(weeks=30), rid=rid, **kw)


_CONDITION_STATES = [
    # (rid, clinical status, verification, Is Active, Is Possibly Active)
    ("active", "active", "confirmed", True, True),
    ("recurrence", "recurrence", "confirmed", True, True),
    ("relapse", "relapse", "confirmed", True, True),
    ("no-clinical-status", None, "confirmed", False, True),
    ("inactive", "inactive", "confirmed", False, False),
    ("remission", "remission", "confirmed", False, False),
    ("resolved", "resolved", "confirmed", False, False),
    ("refuted", "active", "refuted", False, False),
    ("entered-in-error", "active", "entered-in-error", False, False),
    ("unconfirmed", "active", "unconfirmed", True, True),
    ("no-verification-status", "active", None, True, True),
]


def _condition_states() -> list[dict[str, Any]]:
    return [person()] + [_cond("SNOMEDCT", "68815009", rid, clinical_status=cs, verification=vs)
                         for rid, cs, vs, *_ in _CONDITION_STATES]


_MALIGNANCY = [
    # (rid, system, code, Is Malignancy, Has ICD Prefix C44/D04)
    ("icd-C50.9-breast", "ICD10CM", "C50.9", True, False),
    ("icd-C44.91-skin-scc", "ICD10CM", "C44.91", True, True),
    ("icd-C96.9-lymphoid", "ICD10CM", "C96.9", True, False),
    ("icd-C7A.00-carcinoid", "ICD10CM", "C7A.00", True, False),
    ("icd-D05.10-dcis", "ICD10CM", "D05.10", False, False),
    ("icd-D04.9-skin-in-situ", "ICD10CM", "D04.9", False, True),
    ("icd-I10-hypertension", "ICD10CM", "I10", False, False),
    ("snomed-363346000", "SNOMEDCT", "363346000", True, False),
    ("snomed-254837009-breast", "SNOMEDCT", "254837009", True, False),
    ("snomed-254701007-bcc", "SNOMEDCT", "254701007", True, False),
    ("snomed-55464009-sle", "SNOMEDCT", "55464009", False, False),
    ("who-C50.9-breast", "ICD10", "C50.9", True, False),
    ("who-C91.0-all", "ICD10", "C91.0", True, False),
    ("snomed-91857003-all", "SNOMEDCT", "91857003", True, False),
    ("cm-Z85.3-history-breast", "ICD10CM", "Z85.3", True, False),
]


def _malignancy() -> list[dict[str, Any]]:
    return [person()] + [_cond(system, code, rid) for rid, system, code, *_ in _MALIGNANCY]


def _sle_icd_recorded_only() -> list[dict[str, Any]]:
    c = _cond("ICD10CM", "M32.14", "icd", None)
    c.pop("onsetDateTime")
    c["recordedDate"] = "2024-03-01"
    return [person(), c]


def _sle_onset_and_recorded() -> list[dict[str, Any]]:
    c = _cond("SNOMEDCT", "55464009", "sle", date(2020, 1, 15))
    c["recordedDate"] = "2022-06-01"
    return [person(), c]


def _sle_onset_period() -> list[dict[str, Any]]:
    c = _cond("SNOMEDCT", "55464009", "sle")
    c.pop("onsetDateTime")
    c["onsetPeriod"] = {"start": "2023-01-01T00:00:00Z"}
    return [person(), c]


def _procedures() -> list[dict[str, Any]]:
    per_open = F.procedure(P, "SNOMEDCT", "234336002", None, rid="period-open")
    per_open["performedPeriod"] = {"start": "2026-10-01T00:00:00Z"}
    per = F.procedure(P, "SNOMEDCT", "1172516002", None, rid="period")
    per["performedPeriod"] = {"start": "2026-05-01T00:00:00Z", "end": "2026-05-20T00:00:00Z"}
    return [person(),
            F.procedure(P, "SNOMEDCT", "234336002", ago(days=30), rid="recent"),
            F.procedure(P, "Local", "hsct", ago(days=200), rid="old-local-code"),
            F.procedure(P, "SNOMEDCT", "234336002", ago(days=3), status="not-done", rid="not-done"),
            F.procedure(P, "SNOMEDCT", "234336002", ago(days=3), status="entered-in-error", rid="entered-in-error"),
            F.procedure(P, "SNOMEDCT", "234336002", None, rid="undated"),
            per_open, per]


def _old_procedure_only() -> list[dict[str, Any]]:
    return [person(), F.procedure(P, "Local", "hsct", ago(days=200), rid="old"),
            F.procedure(P, "SNOMEDCT", "234336002", ago(days=3), status="not-done", rid="not-done")]


def _adult_creatinine(birth: date, gender: str | None, scr: float, unit: str = "mg/dL",
                      extra: list[dict[str, Any]] | None = None) -> Callable[[], list[dict[str, Any]]]:
    return lambda: [F.patient(P, birth, gender), obs("2160-0", ago(days=5), "cr", value=scr, unit=unit)] + (extra or [])


_RX = "http://www.nlm.nih.gov/research/umls/rxnorm"
_JUN, _SEP = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 9, 1, tzinfo=UTC)


def _medications() -> list[dict[str, Any]]:
    MR, MS = F.medication_request, F.medication_statement
    weekly = MR(P, "8640", _JUN, _SEP, dose_mg=70, status="completed", rid="weekly-70mg")
    weekly["dosageInstruction"][0]["timing"]["repeat"].update(frequency=1, period=1, periodUnit="wk")
    q8h = MR(P, "8640", _JUN, _SEP, dose_mg=5, status="completed", rid="q8h-5mg")
    q8h["dosageInstruction"][0]["timing"]["repeat"].update(frequency=1, period=8, periodUnit="h")
    no_timing = MR(P, "8640", _JUN, _SEP, dose_mg=20, status="completed", rid="no-period-unit-20mg")
    for k in ("frequency", "period", "periodUnit"):
        del no_timing["dosageInstruction"][0]["timing"]["repeat"][k]
    grams = MR(P, "8640", _JUN, _SEP, dose_mg=1, status="completed", rid="dose-in-g")
    grams["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"].update(unit="g", code="g")
    product = MR(P, "8640", _JUN, _SEP, dose_mg=5, status="completed", rid="product-and-ingredient")
    product["medicationCodeableConcept"] = {"coding": [
        {"system": "http://example.org/formulary", "code": "PRED5", "display": "Prednisone 5 mg tablet"},
        {"system": _RX, "code": "8640", "display": "Prednisone"}]}
    product_only = MR(P, "8640", _JUN, _SEP, dose_mg=5, status="completed", rid="product-only")
    product_only["medicationCodeableConcept"] = {"coding": [
        {"system": "http://example.org/formulary", "code": "PRED5", "display": "Prednisone 5 mg tablet"}]}
    authored = MR(P, "8640", _JUN, None, dose_mg=5, status="completed", rid="no-bounds-authored")
    del authored["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"]
    authored["authoredOn"] = "2026-10-01T00:00:00Z"
    return [
        person(date(1966, 5, 1), "male"),
        MR(P, "8640", _JUN, _SEP, dose_mg=10, per_day=2, status="completed", rid="prednisone-bid"),
        MR(P, "6902", _JUN, None, dose_mg=8, status="active", rid="methylpred-active"),
        MR(P, "8640", _JUN, _SEP, dose_mg=5, status="entered-in-error", rid="request-entered-in-error"),
        MR(P, "8640", _JUN, _SEP, dose_mg=5, status="cancelled", rid="request-cancelled"),
        MR(P, "8640", _JUN, _SEP, dose_mg=5, status="draft", rid="request-draft"),
        MR(P, "68149", _JUN, _SEP, dose_mg=1000, per_day=2, status="completed", rid="mmf"),
        MS(P, "3264", _JUN, _SEP, dose_mg=1.5, status="completed", rid="dexamethasone"),
        MS(P, "8640", _JUN, None, dose_mg=5, status="active", rid="statement-active-open"),
        MS(P, "8640", _JUN, None, dose_mg=5, status="completed", rid="statement-completed-no-end"),
        MS(P, "8638", _JUN, _SEP, dose_mg=5, status="not-taken", rid="statement-not-taken"),
        MS(P, "8638", _JUN, _SEP, dose_mg=5, status="entered-in-error", rid="statement-entered-in-error"),
        weekly, q8h, no_timing, grams, product, product_only, authored,
    ]


SCENARIOS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "empty": lambda: [person()],
    "status-mix": _status_mix,
    "offsets-abc": _offsets("abc"),
    "offsets-cba": _offsets("cba"),
    "offsets-bca": _offsets("bca"),
    "preliminary-newer": lambda: [person(), _creatinine(1.1, days=20, rid="final"),
                                  _creatinine(3.0, days=2, rid="prelim", status="preliminary")],
    "future-newer": lambda: [person(), _creatinine(1.1, days=20, rid="past"), _creatinine(3.0, days=-3, rid="future")],
    "window": lambda: [person(), _creatinine(1.1, days=89, rid="day-89"), _creatinine(1.2, days=120, rid="day-120")],
    "stale-only": lambda: [person(), _creatinine(3.1, days=100, rid="stale")],
    # thresholds
    "creatinine-3.1": lambda: [person(), _creatinine(3.1)],
    "creatinine-1.1": lambda: [person(), _creatinine(1.1)],
    "creatinine-2.5-boundary": lambda: [person(), _creatinine(2.5)],
    "creatinine-230-umol": lambda: [person(), _creatinine(230, "umol/L")],
    "creatinine-221-umol": lambda: [person(), _creatinine(221, "umol/L")],
    "creatinine-mmol": lambda: [person(), _creatinine(0.25, "mmol/L")],
    "creatinine-lt": lambda: [person(), _creatinine(0.3, comparator="<")],
    "creatinine-lt-3": lambda: [person(), _creatinine(3.0, comparator="<")],
    "wbc-non-ucum-unit-text": lambda: [person(), {**obs("6690-2", ago(days=5), "wbc"),
                                                  "valueQuantity": {"value": 4.2, "unit": "x10^9/L"}}],
    "hb-8-gdl": lambda: [person(), obs("718-7", ago(days=5), "hb", value=8.0, unit="g/dL")],
    "hb-9-gdl": lambda: [person(), obs("718-7", ago(days=5), "hb", value=9.0, unit="g/dL")],
    "wbc-2400-per-uL": lambda: [person(), obs("6690-2", ago(days=5), "wbc", value=2400, unit="/uL")],
    "wbc-3.1-10*3-per-uL": lambda: [person(), obs("6690-2", ago(days=5), "wbc", value=3.1, unit="10*3/uL")],
    "cd19-0": lambda: [person(), obs("8116-6", ago(days=5), "cd19", value=0, unit="/uL")],
    "cd19-0.02-10*9-per-L": lambda: [person(), obs("8116-6", ago(days=5), "cd19", value=0.02, unit="10*9/L")],
    "units": _units,
    # ULN
    "alt-100-high-50": lambda: [person(), obs("1742-6", ago(days=5), "alt", value=100, unit="U/L", ref_high=50)],
    "alt-100-no-range": lambda: [person(), obs("1742-6", ago(days=5), "alt", value=100, unit="U/L")],
    "alt-130-high-40": lambda: [person(), obs("1742-6", ago(days=5), "alt", value=130, unit="U/L", ref_high=40)],
    "alt-stale": lambda: [person(), obs("1742-6", ago(days=100), "alt", value=100, unit="U/L", ref_high=50)],
    "alt-mmol": lambda: [person(), obs("1742-6", ago(days=5), "alt", value=100, unit="mmol/L")],
    "bili-umol-high-umol": lambda: [person(), obs("14631-6", ago(days=5), "bili", value=34.2, unit="umol/L",
                                                  ref_high=20.5)],
    "bili-3-mgdl-no-range": lambda: [person(), obs("1975-2", ago(days=5), "bili", value=3.0, unit="mg/dL")],
    "bili-mmol": lambda: [person(), obs("1975-2", ago(days=5), "bili", value=3.0, unit="mmol/L")],
    "ast-iu-no-range": lambda: [person(), obs("1920-8", ago(days=5), "ast", value=30, unit="[IU]/L")],
    "hbv-dna-no-range": lambda: [person(), obs(V, ago(days=5), "hbv", value=30, unit="[IU]/mL")],
    # qualitative
    "readings": _readings,
    "hbsag-positive": _hbsag(value_code=("SNOMEDCT", "10828004"), interpretation="POS"),
    "hbsag-negative": _hbsag(value_code=("SNOMEDCT", "260385009"), interpretation="NEG"),
    "hbsag-conflicting": _hbsag(value_code=("SNOMEDCT", "260385009"), interpretation="POS"),
    "hbsag-stale": _hbsag(value_code=("SNOMEDCT", "260385009"), days=400),
    # age
    "born-2008-11-26": lambda: [person(date(2008, 11, 26))],
    "born-2008-11-27": lambda: [person(date(2008, 11, 27))],
    "born-1956-11-26": lambda: [person(date(1956, 11, 26))],
    "born-1955-11-26": lambda: [person(date(1955, 11, 26))],
    "no-birth-date": lambda: [person(None)],
    # diagnoses
    "sle-snomed": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle")],
    "sle-icd-M32.14": lambda: [person(), _cond("ICD10CM", "M32.14", "icd")],
    "sle-with-text": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", text="SLE, biopsy-proven nephritis")],
    "drug-induced-only": lambda: [person(), _cond("ICD10CM", "M32.0", "dil")],
    "drug-induced-and-sle": lambda: [person(), _cond("SNOMEDCT", "201436003", "dil"), _cond("SNOMEDCT", "55464009", "sle")],
    "sle-resolved": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", clinical_status="resolved")],
    "sle-inactive": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", clinical_status="inactive")],
    "sle-refuted": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", verification="refuted")],
    "sle-no-clinical-status": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", clinical_status=None)],
    "sle-onset-and-recorded": _sle_onset_and_recorded,
    "sle-recorded-only": _sle_icd_recorded_only,
    "sle-onset-period": _sle_onset_period,
    "sle-two-onsets": lambda: [person(), _cond("SNOMEDCT", "55464009", "later", date(2024, 2, 1)),
                               _cond("ICD10CM", "M32.9", "earlier", date(2019, 7, 1))],
    "sle-24-weeks": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", ago(weeks=24, days=1))],
    "sle-23-weeks-6-days": lambda: [person(), _cond("SNOMEDCT", "55464009", "sle", ago(weeks=23, days=6))],
    "condition-states": _condition_states,
    "ln-no-clinical-status": lambda: [person(), _cond("ICD10CM", "M32.14", "ln", clinical_status=None)],
    "ln-resolved": lambda: [person(), _cond("SNOMEDCT", "68815009", "ln", clinical_status="resolved")],
    "cns-lupus-30d": lambda: [person(), _cond("SNOMEDCT", "95644001", "cns", ago(days=30))],
    "cns-lupus-90d": lambda: [person(), _cond("SNOMEDCT", "1144942002", "cns", ago(days=90))],
    "malignancy": _malignancy,
    "dcis-only": lambda: [person(), _cond("ICD10CM", "D05.10", "dcis")],
    "malignancy-remission": lambda: [person(), _cond("ICD10CM", "C50.9", "c50", clinical_status="remission")],
    # procedures, immunizations
    "procedures": _procedures,
    "old-procedure-only": _old_procedure_only,
    "mmr-14d": lambda: [person(), F.immunization(P, "03", ago(days=14), rid="mmr")],
    "varicella-60d": lambda: [person(), F.immunization(P, "21", ago(days=60), rid="varicella")],
    "zoster-recombinant-3d": lambda: [person(), F.immunization(P, "187", ago(days=3), rid="shingrix")],
    "varicella-not-done-3d": lambda: [person(), F.immunization(P, "21", ago(days=3), status="not-done", rid="nd")],
    "varicella-undated": lambda: [person(), F.immunization(P, "21", None, rid="undated")],
    # eGFR
    "ckd-epi-female-50-scr-1.0": _adult_creatinine(date(1976, 5, 1), "female", 1.0),
    "ckd-epi-male-60-scr-1.2": _adult_creatinine(date(1966, 5, 1), "male", 1.2),
    "ckd-epi-female-40-scr-0.5": _adult_creatinine(date(1986, 5, 1), "female", 0.5),
    "ckd-epi-male-60-scr-106.08-umol": _adult_creatinine(date(1966, 5, 1), "male", 106.08, "umol/L"),
    "ckd-epi-18th-birthday": _adult_creatinine(date(2008, 11, 26), "male", 0.8,
                                               extra=[obs(HEIGHT, ago(days=5), "ht", value=175, unit="cm")]),
    "reported-egfr-25": _adult_creatinine(date(1976, 5, 1), "female", 0.8, extra=[
        obs("98979-8", ago(days=20), "egfr", value=25, unit="mL/min/{1.73_m2}")]),
    "reported-egfr-stale": _adult_creatinine(date(1976, 5, 1), "female", 1.0, extra=[
        obs("98979-8", ago(days=120), "egfr", value=25, unit="mL/min/{1.73_m2}")]),
    "reported-egfr-unknown-unit": _adult_creatinine(date(1976, 5, 1), "female", 1.0, extra=[
        obs("98979-8", ago(days=20), "egfr", value=25, unit="mL/s")]),
    "schwartz-120cm": _adult_creatinine(date(2016, 1, 1), "male", 0.5, extra=[
        obs(HEIGHT, ago(days=30), "ht", value=120, unit="cm")]),
    "schwartz-48in": _adult_creatinine(date(2016, 1, 1), "female", 0.5, extra=[
        obs(HEIGHT, ago(days=30), "ht", value=48, unit="[in_i]")]),
    "schwartz-no-height": _adult_creatinine(date(2016, 1, 1), "male", 0.5),
    "schwartz-stale-height": _adult_creatinine(date(2016, 1, 1), "male", 0.5, extra=[
        obs(HEIGHT, ago(days=200), "ht", value=120, unit="cm")]),
    "egfr-no-sex": _adult_creatinine(date(1966, 5, 1), None, 1.2),
    "egfr-no-birth-date": _adult_creatinine(None, "male", 1.2),  # type: ignore[arg-type]
    "egfr-stale-creatinine": lambda: [F.patient(P, date(1966, 5, 1), "male"),
                                      obs("2160-0", ago(days=200), "cr", value=1.2, unit="mg/dL")],
    "egfr-creatinine-unknown-unit": _adult_creatinine(date(1966, 5, 1), "male", 0.1, "mmol/L"),
    # creatinine clearance
    "cg-male-60-80kg": _adult_creatinine(date(1966, 5, 1), "male", 1.2, extra=[
        obs(WEIGHT, ago(days=10), "wt", value=80, unit="kg")]),
    "cg-female-50-65kg": _adult_creatinine(date(1976, 5, 1), "female", 0.9, extra=[
        obs(WEIGHT, ago(days=10), "wt", value=65, unit="kg")]),
    "cg-male-60-lb-umol": _adult_creatinine(date(1966, 5, 1), "male", 106.08, "umol/L", extra=[
        obs(WEIGHT, ago(days=10), "wt", value=176.37, unit="[lb_av]")]),
    "cg-no-weight": _adult_creatinine(date(1966, 5, 1), "male", 1.2),
    "cg-stale-weight": _adult_creatinine(date(1966, 5, 1), "male", 1.2, extra=[
        obs(WEIGHT, ago(days=120), "wt", value=80, unit="kg")]),
    "crcl-reported-25": _adult_creatinine(date(1966, 5, 1), "male", 1.2, extra=[
        obs(WEIGHT, ago(days=10), "wt", value=80, unit="kg"),
        obs("2164-2", ago(days=10), "crcl", value=25, unit="mL/min")]),
    # medications
    "medications": _medications,
}


# -- Final / Effective / Latest / Latest In Window / Is Current ------------------------------------

@pytest.mark.parametrize(("rid", "kept"), by_first([
    ("final", True), ("amended", True), ("corrected", True),
    ("preliminary", False), ("registered", False), ("entered-in-error", False), ("cancelled", False),
    ("future-day", False), ("future-second", False), ("undated", False),
    ("today-date-only", True), ("period", True), ("period-open", True), ("instant", True),
]))
def test_final_keeps_only_final_dated_past_results(run, rid, kept):
    assert (f"Observation/{rid}" in run("status-mix")["Final Refs"]) is kept


@pytest.mark.parametrize(("rid", "at"), by_first([
    ("final", utc(ago(days=10))),
    ("today-date-only", "2026-11-26"),
    ("period", "2026-11-02T08:00:00+00:00"),        # a Period: its end
    ("period-open", "2026-11-03T08:00:00+00:00"),   # no end: its start (not the end of time)
    ("instant", "2026-11-04T10:00:00.123+00:00"),
    ("undated", None),
]))
def test_effective_reads_datetime_period_and_instant(run, rid, at):
    row = by_ref(run("status-mix")["Observation Times"])[f"Observation/{rid}"]
    assert text(row["at"]) == at
    assert row["date"] == (at[:10] if at else None)


def test_latest_is_todays_date_only_result_not_a_future_one(run):
    r = run("status-mix")
    assert r["Latest Ref"] == "Observation/today-date-only"
    assert r["Latest In Window Ref"] == "Observation/today-date-only"


@pytest.mark.parametrize("scenario", ["offsets-abc", "offsets-cba", "offsets-bca"])
def test_latest_compares_instants_across_timezone_offsets(run, scenario):
    r = run(scenario)
    assert r["Latest Ref"] == "Observation/c"          # 2026-11-20T04:30Z, written with -05:00
    assert r["Latest In Window Ref"] == "Observation/c"
    assert r["Creatinine >2.5"]["status"] == "met"     # c is 3.0 mg/dL; a (1.0) and b (2.0) are not
    assert r["Creatinine >2.5"]["evidence"][0]["reference"] == "Observation/c"
    assert text(r["Creatinine >2.5"]["evidence"][0]["date"]) == "2026-11-19T23:30:00-05:00"


@pytest.mark.parametrize(("scenario", "latest"), by_first([
    ("preliminary-newer", "Observation/final"),
    ("future-newer", "Observation/past"),
]))
def test_latest_skips_non_final_and_future_results(run, scenario, latest):
    r = run(scenario)
    assert r["Latest Ref"] == latest
    assert r["Creatinine >2.5"]["status"] == "not-met"
    assert r["Creatinine >2.5"]["evidence"][0]["reference"] == latest


def test_latest_in_window_and_is_current(run):
    r = run("window")
    rows = by_ref(r["Observation Times"])
    assert rows["Observation/day-89"]["current"] is True
    assert rows["Observation/day-120"]["current"] is False
    assert r["Latest Ref"] == "Observation/day-89"
    assert r["Latest In Window Ref"] == "Observation/day-89"
    assert r["Latest In 7 Days Ref"] is None


def test_latest_in_window_is_null_when_only_stale_results(run):
    r = run("stale-only")
    assert r["Latest Ref"] == "Observation/stale"
    assert r["Latest In Window Ref"] is None
    assert r["Stale Note"] == "stale: 2026-08-18 is older than the 90 days window"


def test_no_observations(run):
    r = run("empty")
    assert r["Final Refs"] == []
    assert r["Latest Ref"] is None
    assert r["Latest In Window Ref"] is None


# -- Threshold / Compare / Canonical ---------------------------------------------------------------

@pytest.mark.parametrize(("scenario", "define", "status", "value", "unit", "note"), by_first([
    ("creatinine-3.1", "Creatinine >2.5", "met", "3.1", "mg/dL", "compared > 2.5 mg/dL"),
    ("creatinine-1.1", "Creatinine >2.5", "not-met", "1.1", "mg/dL", "compared > 2.5 mg/dL"),
    ("creatinine-2.5-boundary", "Creatinine >2.5", "not-met", "2.5", "mg/dL", "compared > 2.5 mg/dL"),
    ("creatinine-230-umol", "Creatinine >2.5", "met", "230", "umol/L", "compared > 2.5 mg/dL (= 2.6 mg/dL)"),
    ("creatinine-221-umol", "Creatinine >2.5", "not-met", "221", "umol/L", "compared > 2.5 mg/dL (= 2.5 mg/dL)"),
    ("hb-8-gdl", "Hemoglobin >=85", "not-met", "8", "g/dL", "compared >= 85 g/L (= 80 g/L)"),
    ("hb-9-gdl", "Hemoglobin >=85", "met", "9", "g/dL", "compared >= 85 g/L (= 90 g/L)"),
    ("wbc-2400-per-uL", "Leukocytes >=2.5", "not-met", "2400", "/uL", "compared >= 2.5 10*9/L (= 2.4 10*9/L)"),
    ("wbc-3.1-10*3-per-uL", "Leukocytes >=2.5", "met", "3.1", "10*3/uL", "compared >= 2.5 10*9/L (= 3.1 10*9/L)"),
    ("cd19-0", "CD19 >0", "not-met", "0", "/uL", "compared > 0 /uL"),
    ("cd19-0.02-10*9-per-L", "CD19 >0", "met", "0.02", "10*9/L", "compared > 0 /uL (= 20 /uL)"),
]))
def test_threshold_decides_in_canonical_unit(run, scenario, define, status, value, unit, note):
    result = run(scenario)[define]
    assert result["status"] == status
    assert result["missing"] == []
    [ev] = result["evidence"]
    assert ev["reference"].startswith("Observation/")
    # The note names the look-back window the rule used (the card shows it).
    assert (ev["value"], ev["unit"], ev["note"]) == (value, unit, note + "; latest result within 90 days")
    assert text(ev["date"]) == utc(ago(days=10 if scenario.startswith("creatinine") else 5))


def test_threshold_without_result_is_unknown_with_codes_to_order(run):
    result = run("empty")["Creatinine >2.5"]
    assert result["status"] == "unknown"
    assert notes(result) == ["no result within 90 days"]
    assert result["evidence"][0]["reference"] is None
    assert missing(result) == CREATININE_CODES


def test_threshold_on_stale_result_is_unknown_with_its_date(run):
    result = run("stale-only")["Creatinine >2.5"]
    assert result["status"] == "unknown"
    [ev] = result["evidence"]
    assert ev["reference"] == "Observation/stale"
    assert (ev["value"], ev["unit"]) == ("3.1", "mg/dL")
    assert text(ev["date"]) == utc(ago(days=100))
    assert ev["note"] == "stale: 2026-08-18 is older than the 90 days window"
    assert missing(result) == CREATININE_CODES


@pytest.mark.parametrize(("scenario", "value", "unit"), by_first([
    ("creatinine-mmol", "0.25", "mmol/L"),
]))
def test_threshold_on_unrecognised_value_is_unknown(run, scenario, value, unit):
    result = run(scenario)["Creatinine >2.5"]
    assert result["status"] == "unknown"
    [ev] = result["evidence"]
    assert (ev["value"], ev["unit"]) == (value, unit)
    assert ev["note"] == "unit not recognised for creatinine; latest result within 90 days"
    assert missing(result) == CREATININE_CODES


def test_threshold_on_a_result_below_a_limit_decides_when_the_bound_does(run):
    # "<0.3 mg/dL" is not a number, but every value below 0.3 is not above 2.5.
    low = run("creatinine-lt")["Creatinine >2.5"]
    assert low["status"] == "not-met"
    [ev] = low["evidence"]
    assert (ev["value"], ev["unit"]) == ("<0.3", "mg/dL")
    assert ev["note"] == "reported as < 0.3 mg/dL; compared > 2.5 mg/dL; latest result within 90 days"
    # "<3.0 mg/dL" could be 2.9 (above 2.5) or 1.0: the bound cannot decide.
    undecided = run("creatinine-lt-3")["Creatinine >2.5"]
    assert undecided["status"] == "unknown"
    assert missing(undecided) == CREATININE_CODES


def test_threshold_on_non_ucum_unit_text_is_unknown_not_an_engine_error(run):
    result = run("wbc-non-ucum-unit-text")["Leukocytes >=2.5"]
    assert result["status"] == "unknown"
    [ev] = result["evidence"]
    assert (ev["reference"], ev["value"]) == ("Observation/wbc", "4.2")
    assert ev["note"] == "unit not recognised for cell-count; latest result within 90 days"
    assert missing(result) == ["6690-2", "26464-8"]


@pytest.mark.parametrize(("key", "expected"), [
    ("gt_true", True), ("gt_equal", False), ("ge_equal", True), ("ge_false", False),
    ("lt_true", True), ("lt_equal", False), ("le_equal", True), ("le_false", False),
    ("eq_true", True), ("eq_false", False), ("unknown_op", None), ("null_value", None),
])
def test_compare(run, key, expected):
    assert run("empty")["Compare"][key] is expected


@pytest.mark.parametrize(("define", "rid", "value", "unit", "canonical", "canonical_unit"),
                         [(d, r, v, u, c, cu) for d, _code, r, v, u, c, cu in _UNITS],
                         ids=[row[2] for row in _UNITS])
def test_canonical_unit_conversion(run, define, rid, value, unit, canonical, canonical_unit):
    row = by_ref(run("units")[define])[f"Observation/{rid}"]
    if canonical is None:
        assert row["q"] is None
    else:
        assert row["q"]["unit"] == canonical_unit
        assert row["q"]["value"] == pytest.approx(canonical, rel=1e-9)


def test_canonical_reads_printable_unit_without_ucum_code(run):
    row = by_ref(run("units")["Canonical Creatinine"])["Observation/cr-micro-sign-text-only"]
    assert row["q"] == {"@type": "Quantity", "value": pytest.approx(1.0), "unit": "mg/dL"}


@pytest.mark.parametrize("key", ["null_quantity", "unknown_analyte", "unit_of_other_analyte"])
def test_canonical_gives_null_rather_than_a_guess(run, key):
    assert run("empty")["Canonical Edge"][key] is None


# -- ULN, Times ULN, ULN Threshold -------------------------------------------------------------------

@pytest.mark.parametrize(("scenario", "define", "low", "high", "unit", "assumed"), by_first([
    ("alt-100-high-50", "ALT ULN", 50, 50, "U/L", False),
    # No lab limit: the plausible range of ULNs for an adult woman (SLECommon "Default ULN").
    ("alt-100-no-range", "ALT ULN", 19, 56, "U/L", True),
    ("ast-iu-no-range", "AST ULN", 25, 48, "U/L", True),
    ("bili-umol-high-umol", "Bilirubin ULN", 20.5 / 17.1, 20.5 / 17.1, "mg/dL", False),
    ("bili-3-mgdl-no-range", "Bilirubin ULN", 1.0, 1.3, "mg/dL", True),
    ("hbv-dna-no-range", "HBV DNA ULN", 10, 20, "[IU]/mL", True),
]))
def test_uln_from_reference_range_else_assumed_default(run, scenario, define, low, high, unit, assumed):
    got = run(scenario)[define]
    assert got["assumed"] is assumed
    assert got["unreadable"] is False
    assert got["unit"] == unit
    assert (got["low"], got["high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_uln_of_no_observation_is_null(run):
    assert run("empty")["ULN Of Null"] is None
    assert run("empty")["ALT ULN"] is None
    assert run("empty")["ALT Times ULN"] is None


@pytest.mark.parametrize(("scenario", "define", "times"), by_first([
    ("alt-100-high-50", "ALT Times ULN", 2.0),
    ("alt-100-no-range", "ALT Times ULN", 100 / 37.5),  # middle of the assumed range (shown, never decides)
    ("alt-130-high-40", "ALT Times ULN", 3.25),
    ("bili-umol-high-umol", "Bilirubin Times ULN", 34.2 / 20.5),
    ("bili-3-mgdl-no-range", "Bilirubin Times ULN", 3 / 1.15),
    ("bili-mmol", "Bilirubin Times ULN", None),
]))
def test_times_uln(run, scenario, define, times):
    got = run(scenario)[define]
    assert got == (None if times is None else pytest.approx(times, rel=1e-9))


@pytest.mark.parametrize(("scenario", "define", "status", "note"), by_first([
    ("alt-100-high-50", "ALT <3x ULN", "met", "2 x ULN (50 U/L); compared < 3 x ULN; latest result within 90 days"),
    # ALT 100 with no lab limit: 1.79 x ULN at the highest plausible ULN, 5.26 x at the lowest:
    # the default cannot decide "< 3 x ULN".
    ("alt-100-no-range", "ALT <3x ULN", "unknown",
     "1.79-5.26 x ULN over the assumed ULN 19-56 U/L (adult, female): lab's upper limit not on record: "
     "the decision depends on the lab's limit; compared < 3 x ULN; latest result within 90 days"),
    ("alt-130-high-40", "ALT <3x ULN", "not-met", "3.25 x ULN (40 U/L); compared < 3 x ULN; latest result within 90 days"),
    # Bilirubin 3 mg/dL is above 2 x ULN over the whole plausible range (1.0-1.3): decided.
    ("bili-3-mgdl-no-range", "Bilirubin <=2x ULN", "not-met",
     "2.31-3 x ULN (assumed ULN 1-1.3 mg/dL (adult, female): lab's upper limit not on record); compared <= 2 x ULN; "
     "latest result within 90 days"),
]))
def test_uln_threshold_decides(run, scenario, define, status, note):
    result = run(scenario)[define]
    assert result["status"] == status
    [ev] = result["evidence"]
    assert ev["note"] == note
    assert ev["reference"] in ("Observation/alt", "Observation/bili")
    assert text(ev["date"]) == utc(ago(days=5))
    assert result["missing"] == []


def test_uln_threshold_converts_value_and_lab_uln(run):
    result = run("bili-umol-high-umol")["Bilirubin <=2x ULN"]
    assert result["status"] == "met"                        # 34.2 / 20.5 umol/L = 1.67 x ULN
    [ev] = result["evidence"]
    assert (ev["value"], ev["unit"]) == ("34.2", "umol/L")
    assert ev["note"].startswith("1.67 x ULN (1.2 mg/dL)")
    assert "assumed" not in ev["note"]


@pytest.mark.parametrize(("scenario", "define", "codes", "note"), by_first([
    ("empty", "ALT <3x ULN", ["1742-6"], "no result within 90 days"),
    ("alt-stale", "ALT <3x ULN", ["1742-6"], "stale: 2026-08-18 is older than the 90 days window"),
    ("alt-mmol", "ALT <3x ULN", ["1742-6"], "result is not a number in a unit known for alt; latest result within 90 days"),
    ("bili-mmol", "Bilirubin <=2x ULN", ["1975-2", "14631-6"],
     "result is not a number in a unit known for bilirubin; latest result within 90 days"),
]))
def test_uln_threshold_unknown(run, scenario, define, codes, note):
    result = run(scenario)[define]
    assert result["status"] == "unknown"
    assert notes(result) == [note]
    assert missing(result) == codes


# -- qualitative readings -----------------------------------------------------------------------------

@pytest.mark.parametrize(("rid", "value", "interpretation", "positive"),
                         [(r, v, i, p) for r, _kw, _code, v, i, p in _READINGS] + [
                             ("snomed-positive-other-display", True, None, True),
                             ("snomed-negative-no-display", False, None, False)],
                         ids=[row[0] for row in _READINGS] + ["snomed-positive-other-display",
                                                              "snomed-negative-no-display"])
def test_value_interpretation_and_combined_reading(run, rid, value, interpretation, positive):
    row = by_ref(run("readings")["Readings"])[f"Observation/{rid}"]
    assert (row["value"], row["interpretation"], row["positive"]) == (value, interpretation, positive)


@pytest.mark.parametrize(("rid", "value_text", "unit_text"), by_first([
    ("quantity-comparator-<", "<10", "[IU]/mL"),
    ("quantity-above-range", "230000", "[IU]/mL"),
    ("string-<10", "<10", None),
    ("snomed-positive", "Positive", None),
    ("snomed-negative-no-display", "260385009", None),
]))
def test_value_text_keeps_comparator_and_lab_unit(run, rid, value_text, unit_text):
    row = by_ref(run("readings")["Readings"])[f"Observation/{rid}"]
    assert (row["valueText"], row["unitText"]) == (value_text, unit_text)


@pytest.mark.parametrize(("key", "expected"), [
    ("tt", True), ("ff", False), ("tf", None), ("ft", None), ("tn", True), ("nf", False), ("nn", None)])
def test_combine_readings(run, key, expected):
    assert run("empty")["Combine Readings"][key] is expected


@pytest.mark.parametrize(("scenario", "status", "note", "codes"), by_first([
    ("hbsag-positive", "met", "positive; latest result within 12 months", []),
    ("hbsag-negative", "not-met", "negative; latest result within 12 months", []),
    ("hbsag-conflicting", "unknown", "result could not be read; latest result within 12 months", ["5196-1"]),
    ("hbsag-stale", "unknown", "stale: 2025-10-22 is older than the 12 months window", ["5196-1"]),
    ("empty", "unknown", "no result within 12 months", ["5196-1"]),
]))
def test_qualitative_criterion(run, scenario, status, note, codes):
    result = run(scenario)["HBsAg Positive"]
    assert result["status"] == status
    assert notes(result) == [note]
    assert missing(result) == codes
    if scenario != "empty":
        assert result["evidence"][0]["reference"] == "Observation/hbsag"


# -- patient: age -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("scenario", "age", "status_18_70", "status_18_up"), by_first([
    ("born-2008-11-26", 18, "met", "met"),          # 18th birthday today
    ("born-2008-11-27", 17, "not-met", "not-met"),  # 18 tomorrow
    ("born-1956-11-26", 70, "met", "met"),          # 70th birthday today: upper bound inclusive
    ("born-1955-11-26", 71, "not-met", "met"),
]))
def test_age_in_years_and_age_criterion(run, scenario, age, status_18_70, status_18_up):
    r = run(scenario)
    born = scenario.removeprefix("born-")
    assert r["Age In Years"] == age
    assert text(r["Birth Date"]) == born
    assert r["Age 18 to 70"]["status"] == status_18_70
    assert r["Age 18 or more"]["status"] == status_18_up
    [ev] = r["Age 18 to 70"]["evidence"]
    assert (ev["reference"], ev["value"], ev["unit"]) == ("Patient/p", str(age), "a")
    assert ev["note"] == f"born {born}; required 18 to 70 years"
    assert r["Age 18 or more"]["evidence"][0]["note"] == f"born {born}; required at least 18 years"


def test_age_without_birth_date_is_unknown(run):
    r = run("no-birth-date")
    assert r["Age In Years"] is None
    assert r["Age 18 to 70"]["status"] == "unknown"
    assert notes(r["Age 18 to 70"]) == ["birth date not recorded"]
    assert r["Age 18 to 70"]["missing"] == []


def test_patient_facts(run):
    r = run("empty")
    assert (r["Sex"], r["Is Female"], r["Patient Reference"]) == ("female", True, "Patient/p")
    assert run("medications")["Is Female"] is False


# -- SLE diagnosis ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("scenario", "ref", "value"), by_first([
    ("sle-snomed", "Condition/sle", "Systemic lupus erythematosus"),
    ("sle-icd-M32.14", "Condition/icd", "M32.14"),             # no display: the code
    ("sle-with-text", "Condition/sle", "SLE, biopsy-proven nephritis"),  # code.text first
    ("drug-induced-and-sle", "Condition/sle", "Systemic lupus erythematosus"),
]))
def test_sle_diagnosis_met(run, scenario, ref, value):
    r = run(scenario)
    assert r["Has SLE"] is True
    assert r["Has Drug-induced Lupus Only"] is False
    result = r["SLE Diagnosis"]
    assert result["status"] == "met"
    [ev] = result["evidence"]
    assert (ev["reference"], ev["value"], ev["note"]) == (ref, value, "active SLE diagnosis")
    assert text(ev["date"]) == utc(ago(weeks=30))
    assert r["SLE Duration In Weeks"] == 30


def test_drug_induced_lupus_only_is_not_sle(run):
    r = run("drug-induced-only")
    assert r["Has SLE"] is False
    assert r["Has Drug-induced Lupus Only"] is True
    result = r["SLE Diagnosis"]
    assert result["status"] == "not-met"
    [ev] = result["evidence"]
    assert (ev["reference"], ev["value"], ev["note"]) == ("Condition/dil", "M32.0", "drug-induced lupus is not SLE")
    assert r["SLE Onset"] is None
    assert r["SLE Duration In Weeks"] is None


@pytest.mark.parametrize("scenario", ["empty", "sle-resolved", "sle-inactive", "sle-refuted", "sle-no-clinical-status"])
def test_sle_diagnosis_not_met_without_active_confirmed_sle(run, scenario):
    r = run(scenario)
    assert r["Has SLE"] is False
    assert r["SLE Diagnosis"]["status"] == "not-met"
    assert notes(r["SLE Diagnosis"]) == ["no record found of an active SLE diagnosis"]
    assert r["SLE Duration In Weeks"] is None


@pytest.mark.parametrize(("scenario", "onset", "weeks"), by_first([
    ("sle-onset-and-recorded", "2020-01-15", (date(2026, 11, 26) - date(2020, 1, 15)).days // 7),  # onset wins
    ("sle-recorded-only", "2024-03-01", (date(2026, 11, 26) - date(2024, 3, 1)).days // 7),
    ("sle-onset-period", "2023-01-01T00:00:00+00:00", (date(2026, 11, 26) - date(2023, 1, 1)).days // 7),
    ("sle-two-onsets", "2019-07-01", (date(2026, 11, 26) - date(2019, 7, 1)).days // 7),  # earliest
    ("sle-24-weeks", utc(ago(weeks=24, days=1)), 24),
    ("sle-23-weeks-6-days", utc(ago(weeks=23, days=6)), 23),
]))
def test_sle_onset_and_duration(run, scenario, onset, weeks):
    r = run(scenario)
    assert text(r["SLE Onset"]) == onset
    assert r["SLE Duration In Weeks"] == weeks


# -- conditions: status, criteria, malignancy ----------------------------------------------------------

@pytest.mark.parametrize(("rid", "clinical", "verification", "active", "possibly"),
                         _CONDITION_STATES, ids=[row[0] for row in _CONDITION_STATES])
def test_condition_status_functions(run, rid, clinical, verification, active, possibly):
    row = by_ref(run("condition-states")["Condition Facts"])[f"Condition/{rid}"]
    assert (row["clinical"], row["verification"]) == (clinical, verification)
    assert row["notRefuted"] is (verification not in ("refuted", "entered-in-error"))
    assert (row["active"], row["possiblyActive"]) == (active, possibly)


def test_condition_criterion_met_lists_possibly_active_records(run):
    result = run("condition-states")["Lupus Nephritis"]
    assert result["status"] == "met"
    expected = {f"Condition/{rid}" for rid, *_, possibly in _CONDITION_STATES if possibly}
    assert {e["reference"] for e in result["evidence"]} == expected
    assert set(notes(result)) == {"lupus nephritis"}
    assert result["missing"] == []


@pytest.mark.parametrize(("scenario", "status", "note"), by_first([
    ("ln-no-clinical-status", "met", "lupus nephritis"),  # may still be present: counts for exclusions
    ("ln-resolved", "not-met", "no record found: lupus nephritis"),
    ("empty", "not-met", "no record found: lupus nephritis"),
]))
def test_condition_criterion(run, scenario, status, note):
    result = run(scenario)["Lupus Nephritis"]
    assert result["status"] == status
    assert notes(result) == [note]
    assert result["missing"] == []


@pytest.mark.parametrize(("scenario", "status", "note"), by_first([
    ("cns-lupus-30d", "met", "CNS lupus within 60 days"),
    ("cns-lupus-90d", "not-met", "no record found: CNS lupus within 60 days"),
    ("empty", "not-met", "no record found: CNS lupus within 60 days"),
]))
def test_recent_condition_criterion(run, scenario, status, note):
    result = run(scenario)["CNS Lupus 60 days"]
    assert result["status"] == status
    assert notes(result) == [note]
    if status == "met":
        assert result["evidence"][0]["reference"] == "Condition/cns"
        assert text(result["evidence"][0]["date"]) == utc(ago(days=30))


@pytest.mark.parametrize(("rid", "system", "code", "malignant", "prefix"), _MALIGNANCY,
                         ids=[row[0] for row in _MALIGNANCY])
def test_is_malignancy_and_icd_prefix(run, rid, system, code, malignant, prefix):
    row = by_ref(run("malignancy")["Condition Facts"])[f"Condition/{rid}"]
    assert row["malignancy"] is malignant
    assert row["skinPrefix"] is prefix
    # The breast cancer value set holds ICD-10 / ICD-10-CM C50 as well as the SNOMED CT concept.
    assert row["breastCode"] is ("breast" in rid)


def test_malignancy_criterion(run):
    result = run("malignancy")["Malignancy"]
    assert result["status"] == "met"
    assert {e["reference"] for e in result["evidence"]} == {
        f"Condition/{rid}" for rid, *_, malignant, _p in _MALIGNANCY if malignant}
    for scenario in ("dcis-only", "malignancy-remission", "empty"):
        other = run(scenario)["Malignancy"]
        assert other["status"] == "not-met", scenario
        assert notes(other) == ["no record found: malignancy"]


# -- procedures and immunizations ----------------------------------------------------------------------

@pytest.mark.parametrize(("rid", "at"), by_first([
    ("recent", utc(ago(days=30))),
    ("period", "2026-05-20T00:00:00+00:00"),
    ("period-open", "2026-10-01T00:00:00+00:00"),
    ("undated", None),
]))
def test_performed(run, rid, at):
    assert text(by_ref(run("procedures")["Procedure Times"])[f"Procedure/{rid}"]["at"]) == at


def test_procedure_criterion(run):
    result = run("procedures")["HSCT"]
    assert result["status"] == "met"
    refs = {e["reference"] for e in result["evidence"]}
    assert refs == {"Procedure/recent", "Procedure/old-local-code", "Procedure/undated", "Procedure/period-open",
                    "Procedure/period"}
    recent = next(e for e in result["evidence"] if e["reference"] == "Procedure/recent")
    assert (recent["value"], recent["unit"], recent["note"]) == ("234336002", None, "HSCT")  # no display: the code
    assert text(recent["date"]) == utc(ago(days=30))


def test_recent_procedure_criterion_counts_undated(run):
    result = run("procedures")["HSCT 3 months"]
    assert result["status"] == "met"
    assert {e["reference"] for e in result["evidence"]} == {
        "Procedure/recent", "Procedure/undated", "Procedure/period-open"}
    assert set(notes(result)) == {"HSCT within 3 months"}


def test_procedure_criteria_not_met(run):
    r = run("old-procedure-only")
    assert r["HSCT"]["status"] == "met"
    assert r["HSCT 3 months"]["status"] == "not-met"
    assert notes(r["HSCT 3 months"]) == ["no record found: HSCT within 3 months"]
    assert run("empty")["HSCT"]["status"] == "not-met"
    assert notes(run("empty")["HSCT"]) == ["no record found: HSCT"]


@pytest.mark.parametrize(("scenario", "status", "ref"), by_first([
    ("mmr-14d", "met", "Immunization/mmr"),
    ("varicella-undated", "met", "Immunization/undated"),
    ("varicella-60d", "not-met", None),
    ("zoster-recombinant-3d", "not-met", None),  # CVX 187 is not live
    ("varicella-not-done-3d", "not-met", None),
    ("empty", "not-met", None),
]))
def test_recent_immunization_criterion(run, scenario, status, ref):
    result = run(scenario)["Live vaccine 4 weeks"]
    assert result["status"] == status
    [ev] = result["evidence"]
    assert ev["reference"] == ref
    assert ev["note"] == ("live vaccine within 4 weeks" if status == "met"
                          else "no record found: live vaccine within 4 weeks")
    if scenario == "mmr-14d":
        assert ev["value"] == "MMR"
        assert text(ev["date"]) == utc(ago(days=14))


# -- eGFR ---------------------------------------------------------------------------------------------

def ckd_epi_2021(scr: float, age: int, female: bool) -> float:
    """Inker LA et al., N Engl J Med 2021;385:1737-49 (creatinine, race-free)."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    return (142 * min(scr / kappa, 1) ** alpha * max(scr / kappa, 1) ** -1.200 * 0.9938 ** age
            * (1.012 if female else 1.0))


def bedside_schwartz(height_cm: float, scr: float) -> float:
    """Schwartz GJ et al., J Am Soc Nephrol 2009;20:629-37."""
    return 0.413 * height_cm / scr


def cockcroft_gault(age: int, weight_kg: float, scr: float, female: bool) -> float:
    """Cockcroft DW, Gault MH. Nephron 1976;16:31-41."""
    return (140 - age) * weight_kg / (72 * scr) * (0.85 if female else 1.0)


# (scenario, reference value computed above from the published equation, that value rounded to 0.1 as
#  the service reports it; the rounded figures are pinned so that a change to either side fails)
_CKD_EPI = [
    ("ckd-epi-female-50-scr-1.0", ckd_epi_2021(1.0, 50, True), 68.6),
    ("ckd-epi-male-60-scr-1.2", ckd_epi_2021(1.2, 60, False), 69.2),
    ("ckd-epi-female-40-scr-0.5", ckd_epi_2021(0.5, 40, True), 121.5),   # Scr below kappa: alpha term
    ("ckd-epi-male-60-scr-106.08-umol", ckd_epi_2021(106.08 / 88.4, 60, False), 69.2),
    ("ckd-epi-18th-birthday", ckd_epi_2021(0.8, 18, False), 131.6),      # adult equation from the 18th birthday
]


@pytest.mark.parametrize(("scenario", "reference", "rounded"), _CKD_EPI, ids=[row[0] for row in _CKD_EPI])
def test_ckd_epi_2021_derived_egfr(run, scenario, reference, rounded):
    assert round(reference, 1) == rounded       # the independent Python value, pinned
    r = run(scenario)
    assert r["Derived eGFR Value"] == pytest.approx(reference, rel=1e-9)
    egfr = r["eGFR"]
    assert egfr["derived"] is True
    assert egfr["value"] == pytest.approx(rounded)
    [ev] = egfr["evidence"]
    assert ev["reference"] == "Observation/cr"
    assert (ev["value"], ev["unit"]) == (str(rounded), "mL/min/{1.73_m2}")
    assert text(ev["date"]) == utc(ago(days=5))
    assert ev["note"].startswith("derived: CKD-EPI 2021 from creatinine ")
    crit = r["eGFR >=30"]
    assert crit["status"] == "met"
    assert crit["evidence"] == egfr["evidence"]


def test_ckd_epi_from_umol_notes_the_lab_value(run):
    r = run("ckd-epi-male-60-scr-106.08-umol")
    assert r["Creatinine mg/dL"] == pytest.approx(1.2)
    assert r["eGFR"]["evidence"][0]["note"] == "derived: CKD-EPI 2021 from creatinine 106.08 umol/L"


@pytest.mark.parametrize(("key", "expected"), [
    ("ckd_female_50", ckd_epi_2021(1.0, 50, True)),
    ("ckd_male_60", ckd_epi_2021(1.2, 60, False)),
    ("ckd_female_low", ckd_epi_2021(0.5, 40, True)),
    ("ckd_null_sex", None),
    ("schwartz", bedside_schwartz(120, 0.5)),
    ("schwartz_zero", None),
    ("cg_male", cockcroft_gault(40, 72, 1.0, False)),
    ("cg_female", cockcroft_gault(40, 72, 1.0, True)),
    ("cg_no_weight", None),
])
def test_equation_functions(run, key, expected):
    got = run("empty")["Formulas"][key]
    assert got == (None if expected is None else pytest.approx(expected, rel=1e-9))


@pytest.mark.parametrize(("scenario", "height", "reference", "rounded"), by_first([
    ("schwartz-120cm", "120", bedside_schwartz(120, 0.5), 99.1),
    ("schwartz-48in", "121.92", bedside_schwartz(48 * 2.54, 0.5), 100.7),
]))
def test_bedside_schwartz_under_18(run, scenario, height, reference, rounded):
    assert round(reference, 1) == rounded
    r = run(scenario)
    assert r["Age In Years"] == 10
    assert r["Height cm"] == pytest.approx(float(height))
    assert r["Derived eGFR Value"] == pytest.approx(reference, rel=1e-9)
    assert r["eGFR"]["value"] == pytest.approx(rounded)
    assert r["eGFR"]["derived"] is True
    [ev] = r["eGFR"]["evidence"]
    assert ev["note"] == f"derived: bedside Schwartz, height {height} cm from creatinine 0.5 mg/dL"
    assert r["eGFR >=30"]["status"] == "met"


@pytest.mark.parametrize("scenario", ["schwartz-no-height", "schwartz-stale-height"])
def test_bedside_schwartz_without_current_height_is_unknown(run, scenario):
    r = run(scenario)
    assert r["eGFR"] is None
    result = r["eGFR >=30"]
    assert result["status"] == "unknown"
    [ev] = result["evidence"]
    assert (ev["reference"], ev["value"], ev["unit"]) == ("Observation/cr", "0.5", "mg/dL")
    assert ev["note"] == "bedside Schwartz needs a height within 6 months"
    assert missing(result) == EGFR_CODES + CREATININE_CODES + [HEIGHT]


def test_reported_egfr_is_used_first(run):
    r = run("reported-egfr-25")
    egfr = r["eGFR"]
    assert (egfr["value"], egfr["derived"]) == (25, False)
    [ev] = egfr["evidence"]
    assert (ev["reference"], ev["value"], ev["unit"], ev["note"]) == (
        "Observation/egfr", "25", "mL/min/{1.73_m2}", "reported eGFR")
    assert text(ev["date"]) == utc(ago(days=20))
    assert r["eGFR >=30"]["status"] == "not-met"  # although the creatinine (0.8 mg/dL) would derive ~87
    assert r["eGFR >=30"]["missing"] == []


@pytest.mark.parametrize("scenario", ["reported-egfr-stale", "reported-egfr-unknown-unit"])
def test_unusable_reported_egfr_falls_back_to_derived(run, scenario):
    egfr = run(scenario)["eGFR"]
    assert egfr["derived"] is True
    assert egfr["value"] == pytest.approx(68.6)
    assert egfr["evidence"][0]["reference"] == "Observation/cr"


@pytest.mark.parametrize(("scenario", "ref", "note", "codes"), by_first([
    ("egfr-no-sex", "Observation/cr", "sex needed for CKD-EPI 2021", EGFR_CODES + CREATININE_CODES),
    ("egfr-no-birth-date", "Observation/cr", "birth date needed to derive eGFR", EGFR_CODES + CREATININE_CODES),
    ("egfr-stale-creatinine", "Observation/cr", "stale: 2026-05-10 is older than the 90 days window",
     EGFR_CODES + CREATININE_CODES),
    ("egfr-creatinine-unknown-unit", "Observation/cr", "creatinine unit not recognised", EGFR_CODES + CREATININE_CODES),
    ("empty", None, "no eGFR or creatinine result", EGFR_CODES + CREATININE_CODES),
]))
def test_egfr_criterion_unknown(run, scenario, ref, note, codes):
    r = run(scenario)
    assert r["eGFR"] is None
    result = r["eGFR >=30"]
    assert result["status"] == "unknown"
    [ev] = result["evidence"]
    assert (ev["reference"], ev["note"]) == (ref, note)
    assert missing(result) == codes


# -- creatinine clearance -------------------------------------------------------------------------------

_CG = [
    ("cg-male-60-80kg", cockcroft_gault(60, 80, 1.2, False), 74.1, "1.2 mg/dL, weight 80 kg, age 60"),
    ("cg-female-50-65kg", cockcroft_gault(50, 65, 0.9, True), 76.7, "0.9 mg/dL, weight 65 kg, age 50"),
    ("cg-male-60-lb-umol", cockcroft_gault(60, 176.37 * 0.45359237, 106.08 / 88.4, False), 74.1,
     "106.08 umol/L, weight 80 kg, age 60"),
]


@pytest.mark.parametrize(("scenario", "reference", "rounded", "inputs"), _CG, ids=[row[0] for row in _CG])
def test_cockcroft_gault_derived_clearance(run, scenario, reference, rounded, inputs):
    assert round(reference, 1) == rounded
    r = run(scenario)
    assert r["Weight kg"] == pytest.approx(80 if scenario.startswith("cg-male") else 65, abs=1e-3)
    assert r["Derived CrCl Value"] == pytest.approx(reference, rel=1e-9)
    crcl = r["Creatinine Clearance"]
    assert crcl["derived"] is True
    assert crcl["value"] == pytest.approx(rounded)
    [ev] = crcl["evidence"]
    assert (ev["reference"], ev["value"], ev["unit"]) == ("Observation/cr", str(rounded), "mL/min")
    assert ev["note"] == f"derived: Cockcroft-Gault from creatinine {inputs}"
    assert r["CrCl >=30"]["status"] == "met"


def test_reported_creatinine_clearance_is_used_first(run):
    r = run("crcl-reported-25")
    crcl = r["Creatinine Clearance"]
    assert (crcl["value"], crcl["derived"]) == (25, False)
    [ev] = crcl["evidence"]
    assert (ev["reference"], ev["value"], ev["unit"], ev["note"]) == (
        "Observation/crcl", "25", "mL/min", "reported creatinine clearance")
    assert r["CrCl >=30"]["status"] == "not-met"   # Cockcroft-Gault would give 74.1


@pytest.mark.parametrize(("scenario", "ref", "note"), by_first([
    ("cg-no-weight", "Observation/cr", "Cockcroft-Gault needs a weight within 90 days and the sex of the patient"),
    ("cg-stale-weight", "Observation/cr", "Cockcroft-Gault needs a weight within 90 days and the sex of the patient"),
    ("egfr-stale-creatinine", "Observation/cr", "stale: 2026-05-10 is older than the 90 days window"),
    ("empty", None, "no creatinine clearance or creatinine result"),
]))
def test_crcl_criterion_unknown(run, scenario, ref, note):
    r = run(scenario)
    assert r["Creatinine Clearance"] is None
    result = r["CrCl >=30"]
    assert result["status"] == "unknown"
    [ev] = result["evidence"]
    assert (ev["reference"], ev["note"]) == (ref, note)
    assert missing(result) == ["2164-2"] + CREATININE_CODES + [WEIGHT]


# -- criterion logic -------------------------------------------------------------------------------------

_ALL_OF = [("MM", "met", ["m"], []), ("MN", "not-met", ["n"], []), ("MU", "unknown", ["m", "u"], ["u1", "u2"]),
           ("NM", "not-met", ["n"], []), ("NN", "not-met", ["n"], []), ("NU", "not-met", ["n"], []),
           ("UM", "unknown", ["u", "m"], ["u1", "u2"]), ("UN", "not-met", ["n"], []),
           ("UU", "unknown", ["u", "v"], ["u1", "u2", "v1"])]
_ANY_OF = [("MM", "met", ["m"], []), ("MN", "met", ["m"], []), ("MU", "met", ["m"], []),
           ("NM", "met", ["m"], []), ("NN", "not-met", ["n"], []), ("NU", "unknown", ["n", "u"], ["u1", "u2"]),
           ("UM", "met", ["m"], []), ("UN", "unknown", ["u", "n"], ["u1", "u2"]),
           ("UU", "unknown", ["u", "v"], ["u1", "u2", "v1"])]


@pytest.mark.parametrize(("define", "key", "status", "evidence", "codes"),
                         [("All Of", *row) for row in _ALL_OF] + [("Any Of", *row) for row in _ANY_OF],
                         ids=[f"all-of-{row[0]}" for row in _ALL_OF] + [f"any-of-{row[0]}" for row in _ANY_OF])
def test_three_valued_all_of_any_of(run, define, key, status, evidence, codes):
    result = run("empty")[define][key]
    assert result["status"] == status
    assert notes(result) == evidence
    assert missing(result) == codes


@pytest.mark.parametrize(("key", "status", "codes"), [("M", "not-met", []), ("N", "met", []),
                                                     ("U", "unknown", ["u1", "u2"])])
def test_negate(run, key, status, codes):
    result = run("empty")["Negate"][key]
    assert result["status"] == status
    assert notes(result) == [key.lower()]
    assert missing(result) == codes


@pytest.mark.parametrize(("key", "status", "note", "codes"), by_first([
    ("M", "met", "ALT: met; m", []),
    ("U", "unknown", "HBV: unknown; u", ["u1", "u2"]),
    ("no_evidence", "met", "consent: met", []),
    ("null_note", "met", "x: met", []),
]))
def test_part_prefixes_notes(run, key, status, note, codes):
    result = run("empty")["Part"][key]
    assert result["status"] == status
    assert notes(result) == [note]
    assert missing(result) == codes
    if key == "null_note":
        assert (result["evidence"][0]["reference"], result["evidence"][0]["value"]) == ("Observation/1", "5")


def test_review_is_unknown_without_codes(run):
    assert run("empty")["Review"] == {"status": "unknown", "missing": [], "evidence": [
        {"reference": None, "value": None, "unit": None, "date": None, "note": "clinician review: informed consent"}]}


@pytest.mark.parametrize(("key", "status", "codes"), [("T", "met", []), ("F", "not-met", []), ("N", "unknown", ["c"])])
def test_from_boolean(run, key, status, codes):
    result = run("empty")["From Boolean"][key]
    assert result["status"] == status
    assert notes(result) == [key.lower()]
    assert missing(result) == codes


def test_result_replaces_null_lists(run):
    assert run("empty")["Result Nulls"] == {"status": "met", "evidence": [], "missing": []}


# -- medications --------------------------------------------------------------------------------------

_NOW = "2026-11-26T09:00:00.000+00:00"
_EXPOSURES = [
    # (reference, ingredient code, display, start, end, days, mg/day, prednisone-equivalent mg/day)
    ("MedicationRequest/prednisone-bid", "8640", "prednisone", "2026-06-01", "2026-09-01", 92, 20, 20),
    ("MedicationRequest/methylpred-active", "6902", "methylprednisolone", "2026-06-01", _NOW, 178, 8, 10),
    ("MedicationRequest/weekly-70mg", "8640", "prednisone", "2026-06-01", "2026-09-01", 92, 10, 10),
    ("MedicationRequest/q8h-5mg", "8640", "prednisone", "2026-06-01", "2026-09-01", 92, 15, 15),
    ("MedicationRequest/no-period-unit-20mg", "8640", "prednisone", "2026-06-01", "2026-09-01", 92, 20, 20),
    ("MedicationRequest/dose-in-g", "8640", "prednisone", "2026-06-01", "2026-09-01", 92, None, None),
    ("MedicationRequest/product-and-ingredient", "8640", "prednisone", "2026-06-01", "2026-09-01", 92, 5, 5),
    ("MedicationRequest/no-bounds-authored", "8640", "prednisone", "2026-10-01", None, None, 5, 5),
    ("MedicationStatement/dexamethasone", "3264", "dexamethasone", "2026-06-01", "2026-09-01", 92, 1.5, 10),
    ("MedicationStatement/statement-active-open", "8640", "prednisone", "2026-06-01", _NOW, 178, 5, 5),
    ("MedicationStatement/statement-completed-no-end", "8640", "prednisone", "2026-06-01", None, None, 5, 5),
]


def _day(value: str | None) -> str | None:
    return None if value is None else (value if "T" in value else f"{value}T00:00:00+00:00")


@pytest.mark.parametrize(("ref", "code", "display", "start", "end", "days", "mg", "pred"), _EXPOSURES,
                         ids=[row[0].split("/")[1] for row in _EXPOSURES])
def test_exposures(run, ref, code, display, start, end, days, mg, pred):
    r = run("medications")
    e = by_ref(r["GC Exposures"], "reference")[ref]
    assert (e["ingredient"]["code"], e["ingredient"]["display"]) == (code, display)
    assert e["ingredient"]["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert text(e["period"]["low"]) == _day(start)
    assert text(e["period"]["high"]) == _day(end)
    assert e["durationDays"] == days
    assert e["dailyDoseMg"] == (None if mg is None else pytest.approx(mg))
    equivalent = by_ref(r["GC Prednisone Equivalent"], "reference")[ref]["mg"]
    assert equivalent == (None if pred is None else pytest.approx(pred, abs=1e-3))


@pytest.mark.parametrize("ref", [
    "MedicationRequest/request-entered-in-error", "MedicationRequest/request-cancelled",
    "MedicationRequest/request-draft", "MedicationStatement/statement-not-taken",
    "MedicationStatement/statement-entered-in-error", "MedicationRequest/product-only", "MedicationRequest/mmf",
])
def test_not_glucocorticoid_exposures(run, ref):
    assert ref not in {e["reference"] for e in run("medications")["GC Exposures"]}


def test_exposures_match_the_given_ingredient_list(run):
    [e] = run("medications")["IS Exposures"]
    assert (e["reference"], e["ingredient"]["code"], e["dailyDoseMg"]) == ("MedicationRequest/mmf", "68149", 2000)


@pytest.mark.parametrize(("ref", "mg"), by_first([
    ("MedicationRequest/prednisone-bid", 20), ("MedicationRequest/weekly-70mg", 10),
    ("MedicationRequest/q8h-5mg", 15), ("MedicationRequest/no-period-unit-20mg", 20),
    ("MedicationRequest/dose-in-g", None), ("MedicationRequest/mmf", 2000),
    ("MedicationStatement/dexamethasone", 1.5),
]))
def test_daily_dose_mg(run, ref, mg):
    r = run("medications")
    rows = by_ref(r["Request Doses"]) | by_ref(r["Statement Doses"])
    assert rows[ref]["mg"] == (None if mg is None else pytest.approx(mg))


@pytest.mark.parametrize(("ref", "value", "unit", "date_", "note"), by_first([
    ("MedicationRequest/prednisone-bid", "prednisone", "mg/d", "2026-06-01T00:00:00+00:00",
     "glucocorticoid; from 2026-06-01 to 2026-09-01 (92 days), 20 mg/d"),
    ("MedicationRequest/methylpred-active", "methylprednisolone", "mg/d", "2026-06-01T00:00:00+00:00",
     "glucocorticoid; from 2026-06-01 to 2026-11-26 (178 days), 8 mg/d"),
    ("MedicationStatement/statement-completed-no-end", "prednisone", "mg/d", "2026-06-01T00:00:00+00:00",
     "glucocorticoid; from 2026-06-01 to ?, 5 mg/d"),
    ("MedicationRequest/dose-in-g", "prednisone", None, "2026-06-01T00:00:00+00:00",
     "glucocorticoid; from 2026-06-01 to 2026-09-01 (92 days)"),
]))
def test_exposure_evidence(run, ref, value, unit, date_, note):
    ev = by_ref(run("medications")["GC Evidence"], "reference")[ref]
    assert (ev["value"], ev["unit"], text(ev["date"]), ev["note"]) == (value, unit, date_, note)


def test_no_medications(run):
    assert run("empty")["GC Exposures"] == []
    assert run("empty")["GC Evidence"] == []
