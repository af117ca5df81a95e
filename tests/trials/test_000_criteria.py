"""Per-criterion tests for seed 000: `tongji-cd19-bcma-cart-sle` (CD19/BCMA CAR-T, refractory
or moderate-to-severe SLE, Union Hospital Tongji Medical College, adults 18-70).

The seed has five inclusion criteria and no exclusions: I1 consent (review), I2 age, I3 SLE by
EULAR/ACR 2019 for at least 24 weeks, I4 refractory disease (SELENA-SLEDAI > 6, PGA >= 1,
BILAG-2004 1A/2B, >= 12 weeks standard therapy), I5 contraception (review).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest

# The patient who fits the trial lives in the package (the synthetic patient generator uses it).
from cds.synthetic.trial_records import bilag_panel
from cds.synthetic.trial_records import fits_000 as fits
from tests.conftest import EVAL_AT

from .kit import Chart, ago, criterion, day, ev_for, evaluate_trial, missing_codes, notes, without

TRIAL = "tongji-cd19-bcma-cart-sle"

I1 = "I1 Informed consent and compliance"
I2 = "I2 Age 18 to 70"
I3 = "I3 SLE by EULAR/ACR 2019 at least 24 weeks"
I4 = "I4 Refractory moderate-to-severe SLE"
I5 = "I5 Contraception agreement"
REVIEW = [I1, I5]
DATA_INCLUSIONS = [I2, I3, I4]
DATA_EXCLUSIONS: list[str] = []  # the seed lists no exclusion criteria

BILAG_DOMAINS = ["constitutional", "mucocutaneous", "neuropsychiatric", "musculoskeletal", "cardiorespiratory",
                 "gastrointestinal", "ophthalmic", "renal", "haematological"]

Resource = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------

PID = "p000"


# The kit's builders for this module's patient; case ids are plain names ("Observation/s6").
C = Chart(PID, EVAL_AT, ids="plain")


def base(at: datetime, *drop: str) -> list[Resource]:
    """The fitting patient without the resources whose id ends in one of `drop`."""
    return without(fits(PID, at), *(f"{PID}-{d}" for d in drop))


def run(engine: Any, define: str, resources: list[Resource], at: datetime) -> dict[str, Any]:
    return criterion(engine, TRIAL, define, resources, at)


score = C.score


# --------------------------------------------------------------------------------------------
# The fitting patient.
# --------------------------------------------------------------------------------------------

def test_000_fits_the_trial(rules_engine, eval_at):
    out = evaluate_trial(rules_engine, TRIAL, fits(PID, eval_at), eval_at)
    for define in DATA_INCLUSIONS:
        assert out[define]["status"] == "met", (define, out[define])
    for define in DATA_EXCLUSIONS:
        assert out[define]["status"] == "not-met", (define, out[define])
    for define in REVIEW:
        assert out[define]["status"] == "unknown"


# --------------------------------------------------------------------------------------------
# Review criteria: unknown with a clinician-review note whatever the record holds.
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("define", [
    pytest.param(I1, id="000-I1-review"),
    pytest.param(I5, id="000-I5-review"),
])
@pytest.mark.parametrize("record", ["fits", "empty", "male"])
def test_000_review_criteria(rules_engine, eval_at, define, record):
    resources = {
        "fits": fits(PID, eval_at),
        "empty": [C.patient(None, None)],
        "male": [C.patient(date(1980, 1, 2), "male")],
    }[record]
    out = run(rules_engine, define, resources, eval_at)
    assert out["status"] == "unknown"
    assert out["missing"] == []
    assert out["evidence"][0]["note"].startswith("clinician review: ")


# --------------------------------------------------------------------------------------------
# I2 age 18 to 70.
# --------------------------------------------------------------------------------------------

def _born(at: datetime, years: int, days_after_birthday: int) -> date:
    birthday = date(at.year - years, at.month, at.day)
    return birthday - timedelta(days=days_after_birthday)


@pytest.mark.parametrize("birth, status, age", [
    pytest.param(lambda at: date(at.year - 34, 5, 14), "met", "34", id="000-I2-met"),
    pytest.param(lambda at: _born(at, 18, 0), "met", "18", id="000-I2-met-18th-birthday"),
    pytest.param(lambda at: _born(at, 70, 200), "met", "70", id="000-I2-met-aged-70"),
    pytest.param(lambda at: _born(at, 71, 3), "not-met", "71", id="000-I2-not-met-71"),
    pytest.param(lambda at: _born(at, 18, -1), "not-met", "17", id="000-I2-not-met-17"),
])
def test_000_i2_age(rules_engine, eval_at, birth: Callable[[datetime], date], status, age):
    out = run(rules_engine, I2, [C.patient(birth(eval_at), "male")], eval_at)
    assert out["status"] == status
    ev = out["evidence"][0]
    assert (ev["reference"], ev["value"], ev["unit"]) == (f"Patient/{PID}", age, "a")
    assert "required 18 to 70 years" in ev["note"]


def test_000_i2_missing_birth_date(rules_engine, eval_at):
    out = run(rules_engine, I2, [C.patient(None, "female")], eval_at)
    assert out["status"] == "unknown"
    assert "birth date not recorded" in notes(out)


# --------------------------------------------------------------------------------------------
# I3 SLE by EULAR/ACR 2019, diagnosed at least 24 weeks before screening.
# --------------------------------------------------------------------------------------------

def test_000_i3_met(rules_engine, eval_at):
    out = run(rules_engine, I3, fits(PID, eval_at), eval_at)
    assert out["status"] == "met"
    sle = [e for e in out["evidence"] if e["reference"] == f"Condition/{PID}-sle"]
    assert any(e["note"].startswith("diagnosis: met") for e in sle)
    duration = next(e for e in sle if e["note"].startswith("duration: met"))
    assert (duration["unit"], day(duration)) == ("wk", "2019-03-01")
    assert int(duration["value"]) >= 24
    eular = ev_for(out, f"Observation/{PID}-eular")
    assert (eular["value"], eular["unit"], day(eular)) == ("22", "{score}", "2019-03-15")
    assert eular["note"].startswith("EULAR/ACR 2019: met")


I3_CASES = [
    # (id, status, drop, add, check)
    ("000-I3-not-met-no-diagnosis", "not-met", ("sle",), [],
     lambda out, at: "no record found of an active SLE diagnosis" in notes(out)),
    ("000-I3-not-met-drug-induced-lupus", "not-met", ("sle",),
     [C.cond("SNOMEDCT", "201436003", date(2020, 6, 1), name="dil")],
     lambda out, at: ev_for(out, "Condition/dil")["note"] == "diagnosis: not-met; drug-induced lupus is not SLE"),
    ("000-I3-not-met-resolved-diagnosis", "not-met", ("sle",),
     [C.cond("SNOMEDCT", "55464009", date(2015, 1, 1), clinical_status="resolved", name="old")],
     lambda out, at: "no record found of an active SLE diagnosis" in notes(out)),
    ("000-I3-not-met-score-below-10", "not-met", ("eular",),
     [score("eular-acr-2019", 8, datetime(2019, 3, 15, 10, 0), "eular8")],
     lambda out, at: (ev_for(out, "Observation/eular8")["value"], ev_for(out, "Observation/eular8")["unit"],
                  day(ev_for(out, "Observation/eular8"))) == ("8", "{score}", "2019-03-15")),
    ("000-I3-not-met-diagnosed-10-weeks-ago", "not-met", ("sle",),
     [C.cond("SNOMEDCT", "55464009", date(2026, 9, 17), name="new")],
     lambda out, at: (ev_for(out, "Condition/new")["value"], ev_for(out, "Condition/new")["unit"],
                  day(ev_for(out, "Condition/new"))) == ("10", "wk", "2026-09-17")),
    ("000-I3-missing-score", "unknown", ("eular",), [],
     lambda out, at: missing_codes(out) == {"eular-acr-2019"} and "EULAR/ACR 2019: unknown; no result" in notes(out)),
    ("000-I3-missing-diagnosis-date", "unknown", ("sle",),
     [C.cond("SNOMEDCT", "55464009", None, name="undated")],
     lambda out, at: "duration: unknown; onset or recorded date of the SLE diagnosis not recorded" in notes(out)),
]


@pytest.mark.parametrize("status, drop, add, check", [pytest.param(*c[1:], id=c[0]) for c in I3_CASES])
def test_000_i3_cases(rules_engine, eval_at, status, drop, add, check):
    out = run(rules_engine, I3, base(eval_at, *drop) + add, eval_at)
    assert out["status"] == status, out
    assert check(out, eval_at), out


def test_000_i3_duration_boundary(rules_engine, eval_at):
    """168 days (24 weeks) before screening is enough; 167 days is not."""
    at_day = eval_at.date()
    ok = run(rules_engine, I3, base(eval_at, "sle") + [
        C.cond("SNOMEDCT", "55464009", at_day - timedelta(days=168), name="d168")], eval_at)
    short = run(rules_engine, I3, base(eval_at, "sle") + [
        C.cond("SNOMEDCT", "55464009", at_day - timedelta(days=167), name="d167")], eval_at)
    assert ok["status"] == "met"
    assert short["status"] == "not-met"
    assert ev_for(short, "Condition/d167")["note"].startswith("duration: not-met")


# --------------------------------------------------------------------------------------------
# I4 refractory / moderate-to-severe: each part deciding.
# --------------------------------------------------------------------------------------------

def test_000_i4_met(rules_engine, eval_at):
    out = run(rules_engine, I4, fits(PID, eval_at), eval_at)
    assert out["status"] == "met"
    screen_day = (eval_at - timedelta(days=14)).date().isoformat()
    selena = ev_for(out, f"Observation/{PID}-selena")
    assert (selena["value"], selena["unit"], day(selena)) == ("12", "{score}", screen_day)
    pga = ev_for(out, f"Observation/{PID}-pga")
    assert (pga["value"], pga["unit"], day(pga)) == ("2", "{score}", screen_day)
    bilag = [e for e in out["evidence"] if e["reference"] == f"Observation/{PID}-bilag"]
    assert {(e["value"], e["note"]) for e in bilag} == {
        ("A", "BILAG-2004: met; bilag-2004-mucocutaneous"), ("B", "BILAG-2004: met; bilag-2004-musculoskeletal")}
    assert "1 A, 1 B in 9 of 9 domains graded" in notes(out)
    treated = {e["reference"] for e in out["evidence"] if e["note"].startswith("treatment: met")}
    # belimumab ended > 12 months ago: not among the courses that show current failure
    assert treated == {f"MedicationStatement/{PID}-hcq", f"MedicationRequest/{PID}-pred", f"MedicationRequest/{PID}-mmf"}
    pred = ev_for(out, f"MedicationRequest/{PID}-pred")
    assert (pred["value"], pred["unit"]) == ("prednisone", "mg/d")
    assert "ongoing" in pred["note"] and "15 mg/d" in pred["note"]
    hcq = ev_for(out, f"MedicationStatement/{PID}-hcq")  # date-only start: days counted on dates
    assert "from 2019-03-20 to ongoing (2808 days), 400 mg/d" in hcq["note"]
    assert "[object" not in notes(out)


def _bilag_domains(when: datetime, grades: dict[str, str]) -> list[Resource]:
    """BILAG-2004 sent as one Observation per domain."""
    return [C.obs(f"bilag-2004-{d}", when, f"bilag-{d}", "Local", value_code=("BILAG", g), category="survey")
            for d, g in grades.items()]


ALL_C = {d: "C" for d in BILAG_DOMAINS}

I4_CASES = [
    # SELENA-SLEDAI > 6
    ("000-I4-selena-not-met-6", "not-met", ("selena",), lambda at: [score("selena-sledai", 6, ago(at, 7), "s6")],
     lambda out, at: ev_for(out, "Observation/s6")["note"] == "SELENA-SLEDAI: not-met; compared > 6 {score}; latest result within 90 days"
     and ev_for(out, "Observation/s6")["value"] == "6"),
    ("000-I4-selena-met-7", "met", ("selena",), lambda at: [score("selena-sledai", 7, ago(at, 7), "s7")],
     lambda out, at: ev_for(out, "Observation/s7")["note"].startswith("SELENA-SLEDAI: met")),
    ("000-I4-selena-missing", "unknown", ("selena",), lambda at: [],
     lambda out, at: missing_codes(out) == {"selena-sledai"} and "SELENA-SLEDAI: unknown; no result" in notes(out)),
    ("000-I4-selena-stale", "unknown", ("selena",), lambda at: [score("selena-sledai", 14, ago(at, 120), "sold")],
     lambda out, at: missing_codes(out) == {"selena-sledai"}
     and day(ev_for(out, "Observation/sold")) == ago(at, 120).date().isoformat()
     and "stale" in ev_for(out, "Observation/sold")["note"]),
    # PGA >= 1
    ("000-I4-pga-not-met", "not-met", ("pga",), lambda at: [score("pga", 0.5, ago(at, 7), "pga05")],
     lambda out, at: ev_for(out, "Observation/pga05")["note"] == "PGA: not-met; compared >= 1 {score}; latest result within 90 days"),
    ("000-I4-pga-met-boundary", "met", ("pga",), lambda at: [score("pga", 1, ago(at, 7), "pga1")],
     lambda out, at: ev_for(out, "Observation/pga1")["note"].startswith("PGA: met")),
    ("000-I4-pga-missing", "unknown", ("pga",), lambda at: [],
     lambda out, at: missing_codes(out) == {"pga"}),
    # BILAG-2004 at least 1 A or 2 B
    ("000-I4-bilag-met-2B", "met", ("bilag",),
     lambda at: [bilag_panel(PID, ago(at, 7), {**ALL_C, "renal": "B", "haematological": "B"}, "b2")],
     lambda out, at: "0 A, 2 B in 9 of 9 domains graded" in notes(out)),
    ("000-I4-bilag-met-per-domain-observations", "met", ("bilag",),
     lambda at: _bilag_domains(ago(at, 7), {**ALL_C, "renal": "A"}),
     lambda out, at: ev_for(out, "Observation/bilag-renal")["value"] == "A"),
    ("000-I4-bilag-not-met-1B", "not-met", ("bilag",),
     lambda at: [bilag_panel(PID, ago(at, 7), {**ALL_C, "musculoskeletal": "B"}, "b1")],
     lambda out, at: "BILAG-2004: not-met; 0 A, 1 B in 9 of 9 domains graded; required at least 1 A or 2 B" in notes(out)
     and ev_for(out, "Observation/b1")["value"] == "B" and day(ev_for(out, "Observation/b1")) is not None),
    ("000-I4-bilag-newer-assessment-decides", "not-met", (),
     lambda at: [bilag_panel(PID, ago(at, 2), ALL_C, "bnew")],
     lambda out, at: "0 A, 0 B in 9 of 9 domains graded" in notes(out)),
    ("000-I4-bilag-incomplete-unknown", "unknown", ("bilag",),
     lambda at: [bilag_panel(PID, ago(at, 7), {"musculoskeletal": "B", "renal": "C"}, "bpart")],
     lambda out, at: "incomplete BILAG-2004 assessment" in notes(out) and missing_codes(out) == {"bilag-2004"}),
    ("000-I4-bilag-missing", "unknown", ("bilag",), lambda at: [],
     lambda out, at: missing_codes(out) == {"bilag-2004"} and "BILAG-2004: unknown; no result" in notes(out)),
    ("000-I4-bilag-stale", "unknown", ("bilag",),
     lambda at: [bilag_panel(PID, ago(at, 200), {**ALL_C, "renal": "A"}, "bold")],
     lambda out, at: "stale" in ev_for(out, "Observation/bold")["note"] and missing_codes(out) == {"bilag-2004"}),
    # at least 12 weeks of standard treatment
    ("000-I4-treatment-not-met-none", "not-met", ("hcq", "pred", "mmf", "belim"), lambda at: [],
     lambda out, at: "treatment: not-met; no record found: standard SLE treatment" in notes(out)),
    ("000-I4-treatment-not-met-6-weeks", "not-met", ("hcq", "pred", "mmf", "belim"),
     lambda at: [C.medrq("8640", ago(at, 42), None, dose_mg=40, name="p6w")],
     lambda out, at: "shorter than 12 weeks" in ev_for(out, "MedicationRequest/p6w")["note"]),
    ("000-I4-treatment-not-met-intended-only", "not-met", ("hcq", "pred", "mmf", "belim"),
     lambda at: [C.medst("5521", ago(at, 200), None, dose_mg=200, status="intended",
                                        name="planned")],
     lambda out, at: "no record found" in notes(out)),
    ("000-I4-treatment-met-12-weeks-azathioprine", "met", ("hcq", "pred", "mmf", "belim"),
     lambda at: [C.medst("1256", ago(at, 150), ago(at, 66), dose_mg=100, name="aza")],
     lambda out, at: "(84 days)" in ev_for(out, "MedicationStatement/aza")["note"]),
    ("000-I4-treatment-met-display-differs", "met", ("hcq", "pred", "mmf", "belim"),
     lambda at: [_redisplayed(C.medrq("8640", ago(at, 150), None, dose_mg=20, name="predB"),
                              "Prednisone")],
     lambda out, at: ev_for(out, "MedicationRequest/predB")["value"] == "prednisone"),
    ("000-I4-treatment-unknown-old-course", "unknown", ("hcq", "pred", "mmf", "belim"),
     lambda at: [C.medst("68149", ago(at, 1100), ago(at, 700), dose_mg=1000, per_day=2,
                                        name="mmfold")],
     lambda out, at: "clinician review: does current activity reflect failure" in notes(out)
     and day(ev_for(out, "MedicationStatement/mmfold")) == ago(at, 1100).date().isoformat()),
    ("000-I4-treatment-unknown-no-end-date", "unknown", ("hcq", "pred", "mmf", "belim"),
     lambda at: [C.medrq("6851", ago(at, 300), None, dose_mg=15, status="stopped", name="mtx")],
     lambda out, at: "duration cannot be computed" in ev_for(out, "MedicationRequest/mtx")["note"]),
]


def _redisplayed(res: Resource, display: str) -> Resource:
    res["medicationCodeableConcept"]["coding"][0]["display"] = display
    return res


@pytest.mark.parametrize("status, drop, add, check", [pytest.param(*c[1:], id=c[0]) for c in I4_CASES])
def test_000_i4_parts(rules_engine, eval_at, status, drop, add, check):
    out = run(rules_engine, I4, base(eval_at, *drop) + add(eval_at), eval_at)
    assert out["status"] == status, out
    assert check(out, eval_at), out


def test_000_i4_not_met_beats_unknown(rules_engine, eval_at):
    """One part not met decides even when another is unknown; the card shows the deciding part."""
    out = run(rules_engine, I4, base(eval_at, "selena", "pga") + [score("pga", 0, ago(eval_at, 7), "pga0")], eval_at)
    assert out["status"] == "not-met"
    assert [e["note"] for e in out["evidence"]] == ["PGA: not-met; compared >= 1 {score}; latest result within 90 days"]
