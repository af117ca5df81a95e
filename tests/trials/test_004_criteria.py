"""Per-criterion tests for seed 004 / NCT06350110 (BH002, CD19-BCMA CAR-T in refractory SLE).

Every criterion of `rules/nct06350110.cql` gets a patient who meets it, one who does not and
one whose data are missing or stale; compound criteria get one case per part deciding. Review
items must stay unknown ("clinician review") whatever the record holds. `fits()` is a
clinically coherent patient who fits the trial; it is reused by the synthetic patient generator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from cds.paths import RULES_DIR
from cds.synthetic import fhir as F

# The patient who fits the trial lives in the package (the synthetic patient generator uses it).
from cds.synthetic.trial_records import fits_004 as fits
from cds.synthetic.trial_records import man_004 as _man
from cds.synthetic.trial_records import woman_004 as _woman
from cds.trialmeta import load_trial

from . import kit
from .kit import Part, When, evaluate_trial, missing_codes, raw, record

TRIAL = "nct06350110"
PID = "p004"
Resource = dict[str, Any]


# ---------------------------------------------------------------------------------------
# Checks on one criterion result
# ---------------------------------------------------------------------------------------

Check = Callable[[dict[str, Any], datetime], None]


def ev(value: str | None = None, unit: str | None = None, days: float | None = None, on: date | None = None,
       note: str | None = None) -> Check:
    """Some evidence entry has this value / unit / date / note (note: substring)."""
    def check(result: dict[str, Any], at: datetime) -> None:
        want_date = (at - timedelta(days=days)).date().isoformat() if days is not None else (on.isoformat() if on else None)

        def ok(e: dict[str, Any]) -> bool:
            if value is not None and e.get("value") != value:
                return False
            if unit is not None and e.get("unit") != unit:
                return False
            if want_date is not None and not str((e.get("date") or {}).get("value", "")).startswith(want_date):
                return False
            return note is None or note in (e.get("note") or "")
        assert any(ok(e) for e in result["evidence"]), (value, unit, want_date, note, result["evidence"])
    return check


def miss(*codes: str) -> Check:
    def check(result: dict[str, Any], at: datetime) -> None:
        assert set(codes) <= missing_codes(result), (codes, result["missing"])
    return check


def no_missing() -> Check:
    def check(result: dict[str, Any], at: datetime) -> None:
        assert result["missing"] == [], result["missing"]
    return check


_CACHE: dict[str, dict[str, Any]] = {}


def _results(engine: Any, resources: list[Resource], at: datetime) -> dict[str, Any]:
    """Every define for a record; records that differ only in generated ids are evaluated once
    (the engine is the slow part; no check here reads evidence references)."""
    key = at.isoformat() + json.dumps([{k: v for k, v in r.items() if k != "id"} for r in resources], sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = evaluate_trial(engine, TRIAL, resources, at)
    return _CACHE[key]


def run(engine: Any, define: str, resources: list[Resource], at: datetime) -> dict[str, Any]:
    result = _results(engine, resources, at)[define]
    assert isinstance(result, dict) and {"status", "evidence", "missing"} <= set(result), result
    return result


# ---------------------------------------------------------------------------------------
# Cases: (id, define, record builder, expected status, checks)
# ---------------------------------------------------------------------------------------

Builder = Callable[[str, datetime], list[Resource]]


def case(cid: str, define: str, build: Builder, status: str, *checks: Check) -> Any:
    return pytest.param(define, build, status, checks, id=cid)


WOMAN = raw(lambda pid, at: _woman(pid))
MAN = raw(lambda pid, at: _man(pid))


def w(*extra: Part) -> Builder:
    """A woman (36) plus the given resources."""
    return lambda pid, at: record(pid, at, WOMAN, *extra)


def m(*extra: Part) -> Builder:
    """A man (42) plus the given resources."""
    return lambda pid, at: record(pid, at, MAN, *extra)


# The kit's builders, in this module's argument order: a diagnosis is SNOMED CT unless said
# otherwise and dated 2020-01-01 unless said otherwise; serology is 30 days old.
o = kit.obs
imm = kit.vaccine
medrq, medst = kit.medrq, kit.medst


def neg(code: str, days: float = 30) -> Part:
    return kit.neg(code, days)


def pos(code: str, days: float = 30) -> Part:
    return kit.pos(code, days)


def cond(code: str, onset: When = date(2020, 1, 1), system: str = "SNOMEDCT", **kw: Any) -> Part:
    return kit.cond(system, code, onset, **kw)


def proc(code: str, days: float, system: str = "SNOMEDCT") -> Part:
    return kit.proc(system, code, days)


SLE = cond("55464009", date(2017, 5, 1))
I2, I3, I4 = "I2 EULAR ACR 2019 score at least 10", "I3 SELENA-SLEDAI at least 8", "I4 CD19 B cells present"
I9 = "I9 Organ function"
I11 = "I11 Negative pregnancy test"
E1, E2, E4 = "E1 Severe lupus nephritis or hemodialysis", "E2 CNS disease", "E4 Immunodeficiency infection peptic ulcer"
E5, E6, E7 = "E5 Immunosuppressant within 1 week", "E6 HIV HBV HCV", "E7 Syphilis"
E14, E15, E17 = "E14 Pregnant or lactating", "E15 Prior CD19 or BCMA therapy", "E17 Malignancy"

# Organ-function parts that pass, to let one I9 part decide at a time.
AST_OK = o("1920-8", 10, value=24, unit="U/L", ref_high=40)
ALT_OK = o("1742-6", 10, value=19, unit="U/L", ref_high=35)
BILI_OK = o("1975-2", 10, value=0.5, unit="mg/dL")
CREA_OK = o("2160-0", 10, value=0.78, unit="mg/dL")
WEIGHT = o("29463-7", 10, value=58, unit="kg", category="vital-signs")
ECHO_OK = o("18043-0", 60, value=63, unit="%", category="imaging")


def i9(**replace: Any) -> Builder:
    parts = {"ast": AST_OK, "alt": ALT_OK, "bili": BILI_OK, "crea": CREA_OK, "weight": WEIGHT, "echo": ECHO_OK}
    parts.update(replace)
    return w(*[p for p in parts.values() if p is not None])


# Negative serology for the E6 parts that are not under test.
def e6(*extra: Callable[[str, datetime], Resource], hiv: bool = True, hbv: bool = True, hcv: bool = True) -> Builder:
    base = ([neg("56888-1")] if hiv else []) + ([neg("5196-1")] if hbv else []) + ([neg("13955-0")] if hcv else [])
    return w(*base, *extra)


HBV_DNA_ND = o("42595-9", 30, value=10, comparator="<", unit="[IU]/mL", ref_high=20, interpretation="ND")
CASES = [
    # I1 age 18-90
    case("004-I1-met", "I1 Age 18 to 90", w(), "met", ev(value="36", unit="a")),
    case("004-I1-not-met-child", "I1 Age 18 to 90", lambda pid, at: [F.patient(pid, date(2010, 1, 5), "female")], "not-met", ev(value="16")),
    case("004-I1-not-met-over-90", "I1 Age 18 to 90", lambda pid, at: [F.patient(pid, date(1935, 6, 1), "male")], "not-met", ev(value="91")),
    case("004-I1-missing", "I1 Age 18 to 90", lambda pid, at: [F.patient(pid, None, "female")], "unknown", ev(note="birth date not recorded")),
    # I2 SLE with EULAR/ACR 2019 >= 10
    case("004-I2-met", I2, w(SLE, o("eular-acr-2019", 700, "Local", value=20, unit="{score}")), "met",
         ev(value="20", unit="{score}", days=700, note="EULAR/ACR 2019 score: met"), ev(note="SLE diagnosis: met")),
    case("004-I2-not-met-score", I2, w(SLE, o("eular-acr-2019", 700, "Local", value=8, unit="{score}")), "not-met",
         ev(value="8", unit="{score}", note="EULAR/ACR 2019 score: not-met")),
    case("004-I2-not-met-no-sle", I2, w(o("eular-acr-2019", 700, "Local", value=14, unit="{score}")), "not-met",
         ev(note="no record found of an active SLE diagnosis")),
    case("004-I2-not-met-drug-induced", I2, w(cond("201436003"), o("eular-acr-2019", 700, "Local", value=12, unit="{score}")),
         "not-met", ev(note="drug-induced lupus is not SLE")),
    case("004-I2-missing", I2, w(SLE), "unknown", miss("eular-acr-2019"), ev(note="EULAR/ACR 2019 score: unknown; no result")),
    # I3 SELENA-SLEDAI >= 8
    case("004-I3-met", I3, w(o("selena-sledai", 10, "Local", value=12, unit="{score}")), "met", ev(value="12", unit="{score}", days=10)),
    case("004-I3-met-boundary", I3, w(o("selena-sledai", 10, "Local", value=8, unit="{score}")), "met", ev(value="8")),
    case("004-I3-not-met", I3, w(o("selena-sledai", 10, "Local", value=6, unit="{score}")), "not-met", ev(value="6", unit="{score}", days=10)),
    case("004-I3-missing-stale", I3, w(o("selena-sledai", 120, "Local", value=14, unit="{score}")), "unknown",
         miss("selena-sledai"), ev(value="14", days=120, note="stale")),
    case("004-I3-missing", I3, w(), "unknown", miss("selena-sledai"), ev(note="no result")),
    # I4 CD19+ B cells present
    case("004-I4-met", I4, w(o("8116-6", 10, value=210, unit="/uL")), "met", ev(value="210", unit="/uL", days=10, note="CD19 count: met")),
    case("004-I4-met-si-units", I4, w(o("8116-6", 10, value=0.21, unit="10*9/L")), "met", ev(value="0.21", unit="10*9/L")),
    case("004-I4-met-percent", I4, w(o("8117-4", 10, value=9, unit="%")), "met", ev(value="9", unit="%", note="CD19 %: met")),
    case("004-I4-not-met", I4, w(o("8116-6", 10, value=0, unit="/uL"), o("8117-4", 10, value=0, unit="%")), "not-met",
         ev(value="0", unit="/uL", note="CD19 count: not-met")),
    case("004-I4-not-met-below-limit", I4, w(o("8116-6", 10, value=1, comparator="<", unit="/uL")), "not-met",
         ev(value="<1", unit="/uL", note="below the assay limit")),
    case("004-I4-missing-stale", I4, w(o("8116-6", 200, value=180, unit="/uL")), "unknown", miss("8116-6", "8117-4"),
         ev(value="180", days=200, note="stale")),
    case("004-I4-missing", I4, w(), "unknown", miss("8116-6", "8117-4")),
    # I5 haemoglobin >= 85 g/L
    case("004-I5-met", "I5 Hemoglobin at least 85 g/L", w(o("718-7", 10, value=108, unit="g/L")), "met", ev(value="108", unit="g/L", days=10)),
    case("004-I5-not-met", "I5 Hemoglobin at least 85 g/L", w(o("718-7", 10, value=7.9, unit="g/dL")), "not-met",
         ev(value="7.9", unit="g/dL", note="= 79")),
    case("004-I5-missing-stale", "I5 Hemoglobin at least 85 g/L", w(o("718-7", 100, value=112, unit="g/L")), "unknown",
         miss("718-7"), ev(value="112", days=100, note="stale")),
    case("004-I5-missing-unit", "I5 Hemoglobin at least 85 g/L", w(o("718-7", 10, value=6.8, unit="mmol/L")), "unknown",
         miss("718-7"), ev(note="unit not recognised")),
    # I6 WBC >= 2.5
    case("004-I6-met", "I6 WBC at least 2.5", w(o("6690-2", 10, value=3100, unit="/uL")), "met", ev(value="3100", unit="/uL", note="= 3.1")),
    case("004-I6-not-met", "I6 WBC at least 2.5", w(o("6690-2", 10, value=2.1, unit="10*9/L")), "not-met", ev(value="2.1", unit="10*9/L", days=10)),
    case("004-I6-missing", "I6 WBC at least 2.5", w(), "unknown", miss("6690-2", "26464-8")),
    # I7 neutrophils >= 1.0
    case("004-I7-met", "I7 Neutrophils at least 1.0", w(o("751-8", 10, value=1.0, unit="10*9/L")), "met", ev(value="1", unit="10*9/L")),
    case("004-I7-not-met", "I7 Neutrophils at least 1.0", w(o("751-8", 10, value=0.8, unit="10*9/L")), "not-met", ev(value="0.8", days=10)),
    case("004-I7-missing-stale", "I7 Neutrophils at least 1.0", w(o("751-8", 95, value=2.2, unit="10*9/L")), "unknown",
         miss("751-8"), ev(note="stale")),
    # I8 platelets >= 50
    case("004-I8-met", "I8 Platelets at least 50", w(o("777-3", 10, value=148, unit="10*9/L")), "met", ev(value="148", unit="10*9/L")),
    case("004-I8-not-met", "I8 Platelets at least 50", w(o("777-3", 10, value=42, unit="10*3/uL")), "not-met", ev(value="42", unit="10*3/uL")),
    case("004-I8-missing", "I8 Platelets at least 50", w(), "unknown", miss("777-3")),
    # I9 organ function: every part deciding
    case("004-I9-met", I9, i9(), "met", ev(value="63", unit="%", days=60, note="echo LVEF: met"),
         ev(unit="mL/min", note="creatinine clearance: met; derived: Cockcroft-Gault")),
    case("004-I9-met-assumed-uln", I9, i9(ast=o("1920-8", 10, value=30, unit="U/L")), "met", ev(value="30", note="assumed ULN")),
    case("004-I9-not-met-ast", I9, i9(ast=o("1920-8", 10, value=95, unit="U/L", ref_high=40)), "not-met",
         ev(value="95", unit="U/L", days=10, note="AST: not-met")),
    case("004-I9-not-met-alt", I9, i9(alt=o("1742-6", 10, value=70, unit="U/L", ref_high=35)), "not-met",
         ev(value="70", unit="U/L", note="ALT: not-met; 2 x ULN")),
    case("004-I9-not-met-crcl", I9, i9(crea=o("2160-0", 10, value=2.3, unit="mg/dL"), weight=o("29463-7", 10, value=50, unit="kg")),
         "not-met", ev(unit="mL/min", note="creatinine clearance: not-met")),
    case("004-I9-not-met-bilirubin", I9, i9(bili=o("14631-6", 10, value=44, unit="umol/L")), "not-met",
         ev(value="44", unit="umol/L", note="bilirubin: not-met")),
    case("004-I9-not-met-echo", I9, i9(echo=o("18043-0", 60, value=45, unit="%")), "not-met", ev(value="45", unit="%", note="echo LVEF: not-met")),
    case("004-I9-not-met-lvef-any-method", I9, i9(echo=o("10230-1", 60, value=40, unit="%")), "not-met",
         ev(value="40", note="echo LVEF: not-met")),
    case("004-I9-missing-lvef-method", I9, i9(echo=o("10230-1", 60, value=60, unit="%")), "unknown", miss("18043-0"),
         ev(note="method not stated")),
    case("004-I9-missing-lvef-stale", I9, i9(echo=o("18043-0", 430, value=60, unit="%")), "unknown", miss("18043-0"),
         ev(value="60", days=430, note="stale")),
    case("004-I9-missing-alt", I9, i9(alt=None), "unknown", miss("1742-6"), ev(note="ALT: unknown; no result")),
    case("004-I9-missing-weight", I9, i9(weight=None), "unknown", miss("2164-2", "29463-7"),
         ev(note="creatinine clearance: unknown")),
    # I11 negative pregnancy test
    case("004-I11-met", I11, w(neg("2118-8", 7)), "met", ev(value="Negative", days=7, note="negative")),
    case("004-I11-met-urine", I11, w(neg("2106-3", 3)), "met", ev(value="Negative", days=3)),
    case("004-I11-met-male", I11, m(), "met", ev(note="not applicable: male")),
    case("004-I11-not-met", I11, w(pos("2118-8", 7)), "not-met", ev(value="Positive", days=7, note="positive")),
    case("004-I11-missing", I11, w(), "unknown", miss("2118-8"), ev(note="childbearing potential")),
    case("004-I11-missing-stale", I11, w(neg("2118-8", 45)), "unknown", miss("2118-8"), ev(days=45, note="stale")),
    # E1 creatinine > 2.5 mg/dL within 8 weeks, or dialysis
    case("004-E1-met", E1, w(o("2160-0", 20, value=3.1, unit="mg/dL")), "met", ev(value="3.1", unit="mg/dL", days=20, note="creatinine > 2.5 mg/dL: met")),
    case("004-E1-met-molar", E1, w(o("14682-9", 20, value=250, unit="umol/L")), "met", ev(value="250", unit="umol/L", note="= 2.83 mg/dL")),
    case("004-E1-met-any-in-window", E1, w(o("14682-9", 40, value=280, unit="umol/L"), o("2160-0", 5, value=1.9, unit="mg/dL")),
         "met", ev(value="280", days=40)),
    case("004-E1-met-dialysis", E1, w(CREA_OK, proc("302497006", 10)), "met", ev(days=10, note="dialysis: met")),
    case("004-E1-met-esrd", E1, w(CREA_OK, cond("46177005", date(2024, 2, 1))), "met", ev(note="ESRD: met")),
    case("004-E1-not-met", E1, w(CREA_OK), "not-met", ev(value="0.78", unit="mg/dL", days=10, note="highest of 1")),
    case("004-E1-not-met-old-high", E1, w(o("2160-0", 70, value=3.0, unit="mg/dL"), o("2160-0", 10, value=0.9, unit="mg/dL")),
         "not-met", ev(value="0.9")),
    case("004-E1-not-met-boundary", E1, w(o("14682-9", 10, value=221, unit="umol/L")), "not-met", ev(value="221")),
    case("004-E1-missing-stale", E1, w(o("2160-0", 70, value=0.8, unit="mg/dL")), "unknown", miss("2160-0"), ev(days=70, note="stale")),
    case("004-E1-missing", E1, w(), "unknown", miss("2160-0"), ev(note="no record found: dialysis")),
    # E2 CNS disease: each part deciding
    *[case(f"004-E2-met-{label.replace(' ', '-')}", E2, w(cond(code, date(2023, 4, 1), system=system)), "met", ev(on=date(2023, 4, 1), note=f"{label}: met"))
      for label, code, system in [
          ("epilepsy", "84757009", "SNOMEDCT"), ("psychosis", "69322001", "SNOMEDCT"),
          ("organic brain syndrome", "111479008", "SNOMEDCT"), ("CVA", "230690007", "SNOMEDCT"),
          ("encephalitis", "45170000", "SNOMEDCT"), ("CNS vasculitis", "I67.7", "ICD10CM"),
          ("CNS lupus", "95644001", "SNOMEDCT"), ("depression", "35489007", "SNOMEDCT"),
          ("suicidal thoughts", "6471006", "SNOMEDCT")]],
    case("004-E2-unknown-past-stroke", E2, w(cond("230690007", date(2019, 2, 1), clinical_status="resolved")), "unknown",
         no_missing(), ev(note="past history")),
    case("004-E2-not-met-past-depression", E2, w(cond("35489007", date(2015, 2, 1), clinical_status="resolved")), "not-met",
         ev(note="no record found: depression")),
    case("004-E2-not-met-refuted", E2, w(cond("84757009", date(2022, 2, 1), verification="refuted")), "not-met"),
    case("004-E2-missing", E2, w(), "not-met", ev(note="no record found: epilepsy")),
    # E4 immunodeficiency, uncontrolled infection, peptic ulcer
    case("004-E4-met-immunodeficiency", E4, w(cond("234532001")), "met", ev(note="immunodeficiency: met")),
    case("004-E4-met-sepsis", E4, w(cond("91302008", 5)), "met", ev(days=5, note="uncontrolled infection: met; sepsis")),
    case("004-E4-met-peptic-ulcer", E4, w(cond("196682000", 30, clinical_status="recurrence")), "met", ev(note="peptic ulcer: met")),
    case("004-E4-unknown-infection", E4, w(cond("87628006", 5)), "unknown", no_missing(), ev(note="clinician to judge")),
    case("004-E4-not-met-resolved", E4, w(cond("87628006", 200, clinical_status="resolved"), cond("196682000", 900, clinical_status="resolved")),
         "not-met"),
    case("004-E4-missing", E4, w(), "not-met", ev(note="no record found: immunodeficiency"), ev(note="no record found: current infection")),
    # E5 immunosuppressant within 1 week (never met: leukapheresis is ahead)
    case("004-E5-unknown-current", E5, w(medrq("68149", 700, None, dose_mg=1000, per_day=2)), "unknown", no_missing(),
         ev(value="mycophenolate mofetil", unit="mg/d", days=700, note="washout")),
    case("004-E5-unknown-last-week", E5, w(medst("1092437", 400, 3)), "unknown", ev(value="belimumab", note="washout")),
    case("004-E5-unknown-no-end", E5, w(medst("1256", 700, None)), "unknown", ev(value="azathioprine", note="end date not recorded")),
    case("004-E5-not-met", E5, w(medrq("68149", 700, 21, dose_mg=1000, per_day=2, status="stopped")), "not-met", ev(note="no record found")),
    case("004-E5-not-met-steroid-hcq", E5, w(medrq("8640", 100, None, dose_mg=10), medrq("5521", 900, None, dose_mg=200)), "not-met"),
    case("004-E5-missing", E5, w(), "not-met", ev(note="no record found: immunosuppressive therapy")),
    # E6 HIV, active HBV / HCV
    case("004-E6-met-hiv-test", E6, e6(pos("56888-1", 20), hiv=False), "met", ev(value="Positive", days=20, note="HIV: met")),
    case("004-E6-met-hiv-diagnosis", E6, e6(cond("86406008", date(2016, 1, 1)), hiv=False), "met", ev(note="HIV: met; HIV infection")),
    case("004-E6-met-hbv-dna", E6, e6(o("42595-9", 20, value=23000, unit="[IU]/mL", ref_high=20), hbv=False), "met",
         ev(value="23000", unit="[IU]/mL", days=20, note="HBV: met")),
    case("004-E6-unknown-hbsag-dna-nd", E6, e6(pos("5196-1"), HBV_DNA_ND, hbv=False), "unknown", no_missing(), ev(note="inactive carrier")),
    case("004-E6-unknown-hbsag-no-dna", E6, e6(pos("5196-1"), hbv=False), "unknown", miss("42595-9"), ev(value="Positive", note="HBV: unknown")),
    case("004-E6-not-met-anti-hbc-dna-nd", E6, e6(pos("16933-4"), HBV_DNA_ND), "not-met", ev(note="past infection, not active")),
    case("004-E6-unknown-anti-hbc-no-dna", E6, e6(pos("16933-4")), "unknown", miss("42595-9"), ev(note="occult")),
    case("004-E6-met-hcv-rna", E6, e6(pos("13955-0"), pos("11259-9", 20), hcv=False), "met", ev(days=20, note="HCV: met")),
    case("004-E6-not-met-hcv-cleared", E6, e6(pos("13955-0"), neg("11259-9"), hcv=False), "not-met", ev(note="HCV RNA: not-met")),
    case("004-E6-unknown-hcv-ab-no-rna", E6, e6(pos("13955-0"), hcv=False), "unknown", miss("11259-9")),
    case("004-E6-not-met", E6, e6(), "not-met", ev(value="Negative", days=30, note="HIV: not-met")),
    case("004-E6-missing-stale", E6, e6(neg("56888-1", 430), hiv=False), "unknown", miss("56888-1"), ev(days=430, note="stale")),
    case("004-E6-missing", E6, w(), "unknown", miss("56888-1", "5196-1", "13955-0")),
    # E7 syphilis
    case("004-E7-met-diagnosis", E7, w(cond("76272004", 60)), "met", ev(note="syphilis")),
    case("004-E7-met-serology", E7, w(pos("24110-9"), pos("20507-0")), "met", ev(value="Positive", days=30, note="treponemal antibody: met")),
    case("004-E7-unknown-past-treated", E7, w(pos("24110-9"), neg("20507-0")), "unknown", no_missing(), ev(note="past treated")),
    case("004-E7-unknown-no-rpr", E7, w(pos("24110-9")), "unknown", miss("20507-0")),
    case("004-E7-not-met-false-positive-rpr", E7, w(neg("24110-9"), pos("20507-0")), "not-met", ev(note="biological false positive")),
    case("004-E7-unknown-rpr-only", E7, w(pos("20507-0")), "unknown", miss("24110-9"), ev(note="treponemal test is needed")),
    case("004-E7-not-met", E7, w(neg("24110-9")), "not-met", ev(value="Negative", days=30)),
    case("004-E7-missing", E7, w(), "unknown", miss("24110-9")),
    case("004-E7-missing-stale", E7, w(neg("24110-9", 400)), "unknown", miss("24110-9"), ev(days=400, note="stale")),
    # E8 uncontrolled infection
    case("004-E8-met", "E8 Uncontrolled infection", w(cond("91302008", 3)), "met", ev(days=3, note="sepsis")),
    case("004-E8-met-no-status-recent", "E8 Uncontrolled infection", w(cond("A41.9", 10, system="ICD10CM", clinical_status=None)), "met"),
    case("004-E8-unknown", "E8 Uncontrolled infection", w(cond("87628006", 6)), "unknown", no_missing(), ev(days=6, note="controlled")),
    case("004-E8-not-met-old", "E8 Uncontrolled infection", w(cond("91302008", 700, clinical_status=None), cond("91302008", 300, clinical_status="resolved")),
         "not-met"),
    case("004-E8-missing", "E8 Uncontrolled infection", w(), "not-met", ev(note="no record found")),
    # E9 live vaccine within 4 weeks
    case("004-E9-met", "E9 Live vaccine within 4 weeks", w(imm("03", 10)), "met", ev(days=10, note="live vaccine within 4 weeks")),
    case("004-E9-not-met-old", "E9 Live vaccine within 4 weeks", w(imm("21", 40)), "not-met", ev(note="no record found")),
    case("004-E9-not-met-recombinant", "E9 Live vaccine within 4 weeks", w(imm("187", 5)), "not-met"),
    case("004-E9-missing", "E9 Live vaccine within 4 weeks", w(), "not-met", ev(note="no record found: live vaccine")),
    # E14 pregnant or lactating
    case("004-E14-met-test", E14, w(pos("2118-8", 5)), "met", ev(value="Positive", days=5, note="pregnancy test: met")),
    case("004-E14-met-record", E14, w(neg("2118-8", 5), cond("77386006", 70)), "met", ev(days=70, note="pregnancy record: met")),
    case("004-E14-met-lactation", E14, w(neg("2118-8", 5), cond("69840006", 120)), "met", ev(note="lactation: met")),
    case("004-E14-not-met", E14, w(neg("2118-8", 5), cond("77386006", 700)), "not-met", ev(value="Negative", days=5),
         ev(value="no plan to have children within 1 year of treatment (ask the patient; see I12)")),
    case("004-E14-not-met-male", E14, m(), "not-met", ev(note="not applicable: male")),
    case("004-E14-missing", E14, w(), "unknown", miss("2118-8")),
    case("004-E14-missing-stale", E14, w(neg("2118-8", 60)), "unknown", miss("2118-8"), ev(days=60, note="stale")),
    # E15 prior CD19- or BCMA-targeted therapy
    case("004-E15-met-car-t-cd19", E15, w(proc("car-t-cd19", 500, system="Local")), "met", ev(days=500, note="CD19/BCMA CAR-T: met")),
    case("004-E15-met-car-t-bcma", E15, w(proc("car-t-bcma", 500, system="Local")), "met"),
    case("004-E15-met-blinatumomab", E15, w(medst("1597258", 900, 870)), "met", ev(value="blinatumomab", days=900, note="CD19/BCMA agent: met")),
    case("004-E15-met-teclistamab", E15, w(medrq("2619426", 400, 300, status="completed")), "met", ev(value="teclistamab")),
    case("004-E15-unknown-other-target", E15, w(proc("car-t-other", 500, system="Local")), "unknown", no_missing(), ev(note="other/unknown target")),
    case("004-E15-not-met-rituximab", E15, w(medst("121191", 2000, 1985), proc("car-t-cd70", 600, system="Local")), "not-met"),
    case("004-E15-missing", E15, w(), "not-met", ev(note="no record found: prior CD19 or BCMA CAR-T")),
    # E17 malignancy (exceptions)
    case("004-E17-met", E17, w(cond("C18.9", date(2024, 3, 1), system="ICD10CM")), "met", ev(on=date(2024, 3, 1), note="malignancy")),
    case("004-E17-met-history", E17, w(cond("363346000", date(2012, 3, 1), clinical_status="resolved")), "met", ev(note="resolved")),
    case("004-E17-met-thyroid", E17, w(cond("363478007", date(2021, 3, 1), clinical_status="remission")), "met"),
    case("004-E17-met-recent-nmsc", E17, w(cond("254701007", date(2024, 9, 1), clinical_status="resolved")), "met", ev(note="without 5 years disease-free")),
    case("004-E17-not-met-old-nmsc", E17, w(cond("254701007", date(2018, 9, 1), clinical_status="resolved")), "not-met", ev(note="excepted")),
    case("004-E17-met-nmsc-no-status", E17, w(cond("254651007", date(2015, 9, 1), clinical_status=None)), "met"),
    case("004-E17-unknown-breast", E17, w(cond("254837009", date(2020, 9, 1), clinical_status="remission")), "unknown", no_missing(),
         ev(note="in situ")),
    case("004-E17-not-met-refuted", E17, w(cond("363346000", date(2022, 3, 1), verification="refuted")), "not-met", ev(note="no record found")),
    case("004-E17-missing", E17, w(), "not-met", ev(note="no record found: malignancy")),
]


@pytest.mark.parametrize(("define", "build", "status", "checks"), CASES)
def test_criterion(rules_engine: Any, eval_at: datetime, define: str, build: Builder, status: str, checks: tuple[Check, ...]) -> None:
    result = run(rules_engine, define, build(PID, eval_at), eval_at)
    assert result["status"] == status, result
    for check in checks:
        check(result, eval_at)


# ---------------------------------------------------------------------------------------
# Review items and the whole trial
# ---------------------------------------------------------------------------------------

TRIAL_META = load_trial(RULES_DIR / f"{TRIAL}.json")
REVIEW = [c for c in TRIAL_META.criteria if c.review]
DECIDABLE = [c for c in TRIAL_META.criteria if not c.review]


def test_metadata_matches_seed() -> None:
    ids = [c.id for c in TRIAL_META.criteria]
    assert ids == [f"004-I{n}" for n in range(1, 15)] + [f"004-E{n}" for n in range(1, 18)]
    assert [c.id for c in REVIEW] == ["004-I10", "004-I12", "004-I13", "004-I14", "004-E3", "004-E10",
                                      "004-E11", "004-E12", "004-E13", "004-E16"]
    for c in TRIAL_META.criteria:
        assert c.define.startswith(c.id.split("-")[1] + " "), c


RECORDS: dict[str, Builder] = {"fits": fits, "woman-no-data": w(), "man-no-data": m()}


@pytest.mark.parametrize("record", list(RECORDS), ids=[f"004-review-{k}" for k in RECORDS])
def test_review_items_stay_unknown(rules_engine: Any, eval_at: datetime, record: str) -> None:
    """I10, I12-I14, E3, E10-E13, E16: unknown with a 'clinician review' note whatever the data."""
    results = _results(rules_engine, RECORDS[record](PID, eval_at), eval_at)
    for crit in REVIEW:
        result = results[crit.define]
        assert result["status"] == "unknown", (crit.id, result)
        assert result["missing"] == [], crit.id
        assert any("clinician review" in (e["note"] or "") for e in result["evidence"]), (crit.id, result)


def test_fits_the_trial(rules_engine: Any, eval_at: datetime) -> None:
    results = _results(rules_engine, fits(PID, eval_at), eval_at)
    wrong = {}
    for c in DECIDABLE:
        want = "met" if c.type == "inclusion" else "not-met"
        if results[c.define]["status"] != want:
            wrong[c.id] = results[c.define]
    assert not wrong, wrong
    for c in REVIEW:
        assert results[c.define]["status"] == "unknown"


def test_fits_is_clinically_plausible(eval_at: datetime) -> None:
    """The reusable patient is an adult woman of childbearing age with a dated SLE diagnosis."""
    record = fits("x", eval_at)
    patient = record[0]
    assert patient["gender"] == "female"
    age = (eval_at.date() - date.fromisoformat(patient["birthDate"])).days / 365.25
    assert 18 <= age <= 45
    sle = [r for r in record if r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == "55464009"]
    assert sle and sle[0]["onsetDateTime"] < "2020"
    assert len({r["id"] for r in record}) == len(record)


def test_fits_patient_for_a_man_still_fits(rules_engine: Any, eval_at: datetime) -> None:
    """Sex-specific criteria read 'not applicable' for a man instead of asking for hCG."""
    record = [_man(PID)] + [r for r in fits(PID, eval_at)[1:] if r.get("code", {}).get("coding", [{}])[0].get("code") != "2118-8"]
    results = evaluate_trial(rules_engine, TRIAL, record, eval_at)
    assert results[I11]["status"] == "met"
    assert results[E14]["status"] == "not-met"


def test_every_define_is_compiled(compiled_rules: dict[str, Any]) -> None:
    names = {d["name"] for d in compiled_rules[TRIAL]["library"]["statements"]["def"]}
    assert {c.define for c in TRIAL_META.criteria} <= names

