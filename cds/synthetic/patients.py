"""Synthetic patients for demos, tests and benchmarks: `fhir_bundles/patients/`.

A registry of named, clinically coherent records (never real patients). Each entry has a
description, a builder `(pid, at) -> [resources]` whose dates are relative to the evaluation
time `at`, the verdict every trial is expected to give, and, for the variants that change one
thing in a base record, the criteria expected to decide the verdict. `generate(at)` turns the
registry into collection Bundles; `write(out_dir, at)` writes them, a CDS Hooks patient-view
request per patient (prefetch answered exactly as the service's discovery asks) and a README.

    python -m cds.synthetic.patients --at 2026-11-26T09:00:00Z --out fhir_bundles/patients

The bases are a 29-year-old woman who fits every adult trial the rules allow (`adult-likely`),
the child who fits seed 001 (`child-likely`) and the per-trial fitting patients of
`cds.synthetic.trial_records`. Codes come only from shared/codes.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ..fhir.systems import BASE
from ..hooks.prefetch import PrefetchQuery
from ..paths import BUNDLES_DIR, PATIENTS_DIR
from . import fhir as F
from . import trial_records as T
from .codes import SYSTEMS
from .ehr import prefetch_for
from .trial_records import ago, born

Resource = dict[str, Any]
Builder = Callable[[str, datetime], list[Resource]]
Transform = Callable[[str, datetime, list[Resource]], list[Resource]]

HOOK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://trial-cds.dev/synthetic-patients")
DEFAULT_AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

# Trial ids (DESIGN "Trial identifiers") by seed.
T000 = "tongji-cd19-bcma-cart-sle"
T001 = "zju-children-cd19-cart-sle"
T002 = "nct07318259"
T003 = "nct06710717"
T004 = "nct06350110"
TRIALS = (T000, T001, T002, T003, T004)
ADULT_TRIALS = (T000, T002, T003, T004)
SEED_OF = {T000: "000", T001: "001", T002: "002", T003: "003", T004: "004"}

LIKELY, POSSIBLY, EXCLUDED = "likely-eligible", "possibly-eligible", "excluded"

# Displays (codes.md / SLECommon names) for codes the shared builders write without one: records
# carry the display an EHR would send.
_LOINC, _SCT, _RXN, _LOCAL = (SYSTEMS[k] for k in ("LOINC", "SCT", "RxNorm", "Local"))
EXTRA_DISPLAYS = {
    (_LOINC, "4485-9"): "Complement C3 [Mass/volume] in Serum or Plasma",
    (_LOINC, "4498-2"): "Complement C4 [Mass/volume] in Serum or Plasma",
    (_LOINC, "5356-1"): "Smith extractable nuclear Ab [Presence] in Serum",
    (_LOINC, "731-0"): "Lymphocytes [#/volume] in Blood by Automated count",
    (_LOINC, "85354-9"): "Blood pressure panel with all children optional",
    (_LOINC, "8480-6"): "Systolic blood pressure",
    (_LOINC, "8462-4"): "Diastolic blood pressure",
    (_SCT, "68815009"): "Systemic lupus erythematosus glomerulonephritis syndrome",
    (_RXN, "42316"): "tacrolimus",
    (_RXN, "7145"): "mycophenolic acid",
    (_RXN, "8638"): "prednisolone",
    (_LOCAL, "bilag-2004"): "BILAG-2004 assessment",
    (_LOCAL, "lldas"): "Lupus Low Disease Activity State",
    (_LOCAL, "doris-remission"): "DORIS remission",
    (_LOCAL, "dlco-hb-pct-pred"): "DLCO corrected for hemoglobin, % of predicted",
    **{(_LOCAL, f"bilag-2004-{d}"): f"BILAG-2004 {d}" for d in (
        "constitutional", "mucocutaneous", "neuropsychiatric", "musculoskeletal", "cardiorespiratory",
        "gastrointestinal", "ophthalmic", "renal", "haematological")},
}


# --------------------------------------------------------------------------------------------
# Small builders (codes.md only).
# --------------------------------------------------------------------------------------------

def _codings(*codes: tuple[str, str, str]) -> dict[str, Any]:
    return {"coding": [F.coding(system, code, display) for system, code, display in codes]}


def _condition(pid: str, rid: str, onset: datetime | date, *codes: tuple[str, str, str], status: str = "active",
               text: str | None = None) -> Resource:
    """A Condition with several codings (SNOMED CT and ICD-10-CM side by side, as EHRs send them)."""
    res = F.condition(pid, codes[0][0], codes[0][1], onset, clinical_status=status, rid=f"{pid}-{rid}")
    res["code"] = _codings(*codes)
    if text:
        res["code"]["text"] = text
    return res


def _lab(pid: str, rid: str, loinc: str, when: datetime, value: float, unit: str, *, high: float | None = None,
         flag: str | None = None, category: str = "laboratory") -> Resource:
    return F.observation(pid, "LOINC", loinc, when, value=value, unit=unit, ref_high=high, interpretation=flag,
                         category=category, rid=f"{pid}-{rid}")


def _qualitative(pid: str, rid: str, loinc: str, when: datetime, positive: bool) -> Resource:
    value = T.POS if positive else T.NEG
    return F.observation(pid, "LOINC", loinc, when, value_code=value, interpretation="POS" if positive else "NEG",
                         rid=f"{pid}-{rid}")


def _score(pid: str, rid: str, code: str, when: datetime, value: float) -> Resource:
    return T.score(pid, code, when, value, rid=f"{pid}-{rid}")


def ckd_epi_2021(creatinine_mg_dl: float, age: int, female: bool) -> float:
    """CKD-EPI 2021 (race-free), as the lab reports it beside an adult's creatinine."""
    k, a = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / k
    return float(142 * min(ratio, 1.0) ** a * max(ratio, 1.0) ** -1.2 * 0.9938 ** age * (1.012 if female else 1.0))


def age_at(birth: date, when: datetime | date) -> int:
    day = when.date() if isinstance(when, datetime) else when
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _renal_panel(pid: str, when: datetime, birth: date, female: bool, creatinine: float, unit: str) -> list[Resource]:
    """Serum creatinine (mg/dL: LOINC 2160-0; umol/L: 14682-9) and, for adults, the lab's eGFR."""
    if unit == "mg/dL":
        out = [_lab(pid, "creat", "2160-0", when, creatinine, "mg/dL", high=1.02,
                    flag="H" if creatinine > 1.02 else None)]
        mg = creatinine
    else:
        out = [_lab(pid, "creat", "14682-9", when, creatinine, "umol/L", high=90,
                    flag="H" if creatinine > 90 else None)]
        mg = creatinine / 88.4
    age = age_at(birth, when)
    if age >= 18:  # CKD-EPI is an adult equation; a child's eGFR is derived by the rules (bedside Schwartz)
        egfr = round(ckd_epi_2021(mg, age, female))
        out.append(_lab(pid, "egfr", "98979-8", when, egfr, "mL/min/{1.73_m2}", flag="L" if egfr < 60 else None))
    return out


# --------------------------------------------------------------------------------------------
# The adult base: a woman who fits every adult trial the rules allow.
# --------------------------------------------------------------------------------------------

ADULT_AGE = 29.4
ADULT_BILAG = {"constitutional": "C", "mucocutaneous": "B", "neuropsychiatric": "E", "musculoskeletal": "B",
               "cardiorespiratory": "E", "gastrointestinal": "E", "ophthalmic": "E", "renal": "D",
               "haematological": "C"}


@dataclass(frozen=True)
class AdultOptions:
    """What the single-failure variants change in the adult record (one field each)."""

    age_years: float = ADULT_AGE
    creatinine: float = 0.72
    creatinine_unit: str = "mg/dL"
    activity: str = "high"  # "high": SLEDAI-2K 12; "low": serologically active, clinically quiet (4)
    lvef: float = 62
    labs_days_ago: float = 10
    serology: bool = True
    hiv_positive: bool = False
    hcg_positive: bool = False
    diagnosis: str = "sle"  # or "drug-induced"
    prior_cart: bool = False
    lymphoma: bool = False
    ckd: bool = False  # chronic kidney disease on the problem list (stage 4 after lupus nephritis)


def adult_record(pid: str, at: datetime, o: AdultOptions = AdultOptions()) -> list[Resource]:
    """A woman of 29 with SLE for 7 years: class IV lupus nephritis 5 years ago (partial renal
    response; renal BILAG D now), persistently active mucocutaneous and joint disease despite
    hydroxychloroquine, prednisone, mycophenolate mofetil for 5 years, belimumab for 18 months
    and multitarget tacrolimus for 10 months. SLEDAI-2K / SELENA-SLEDAI 12 (arthritis 4, rash 2,
    alopecia 2, low complement 2, raised anti-dsDNA 2), PGA 2, BILAG-2004 mucocutaneous B and
    musculoskeletal B, not in LLDAS or DORIS remission. Mycophenolate stopped 3 weeks ago (washout
    before leukapheresis); now on hydroxychloroquine and prednisone 10 mg/d. Normal kidney and
    liver function, mild anaemia and lymphopenia of active lupus, CD19+ B cells present, normal
    echo and lung function, negative viral and syphilis screen, negative serum hCG 5 days ago."""
    def r(name: str) -> str:  # stable, readable ids per patient
        return f"{pid}-{name}"

    birth = born(at, o.age_years)
    onset = ago(at, 7 * 365 + 40)
    nephritis = ago(at, 5 * 365)
    screen = ago(at, 14)
    labs = ago(at, o.labs_days_ago)
    vitals = ago(at, 10)
    imaging = ago(at, 45)
    virology = ago(at, 30 if o.labs_days_ago <= 30 else o.labs_days_ago)
    high = o.activity == "high"
    out: list[Resource] = [F.patient(pid, birth, "female", name="Adult")]
    # Diagnoses.
    if o.diagnosis == "sle":
        out += [
            _condition(pid, "sle", onset, ("SNOMEDCT", "55464009", "Systemic lupus erythematosus"),
                       ("ICD10CM", "M32.10", "Systemic lupus erythematosus, organ or system involvement unspecified")),
            _condition(pid, "ln", nephritis, ("SNOMEDCT", "68815009", "Systemic lupus erythematosus glomerulonephritis syndrome"),
                       status="remission", text="Lupus nephritis ISN/RPS class IV, partial renal response"),
        ]
    else:
        out.append(_condition(pid, "dil", onset, ("SNOMEDCT", "201436003", "Drug-induced systemic lupus erythematosus"),
                              ("ICD10CM", "M32.0", "Drug-induced systemic lupus erythematosus")))
    if o.ckd:
        out.append(_condition(pid, "ckd", ago(at, 400), ("SNOMEDCT", "709044004", "Chronic kidney disease"),
                              ("ICD10CM", "N18.4", "Chronic kidney disease, stage 4 (severe)")))
    if o.lymphoma:
        out.append(_condition(pid, "dlbcl", ago(at, 20), ("ICD10CM", "C83.30", "Diffuse large B-cell lymphoma, unspecified site"),
                              text="Diffuse large B-cell lymphoma (biopsy 3 weeks ago), staging under way"))
    # Classification and autoantibodies at diagnosis.
    out += [
        _score(pid, "eular", "eular-acr-2019", onset + timedelta(days=21), 26),
        F.observation(pid, "LOINC", "5048-4", onset + timedelta(days=3), value_string="1:640", interpretation="POS",
                      rid=r("ana")),
        _qualitative(pid, "sm", "5356-1", onset + timedelta(days=3), True),
    ]
    # Disease activity at screening.
    if high:
        pga: float
        bilag, sledai, pga = ADULT_BILAG, 12, 2
    else:  # serologically active, clinically quiescent: low complement 2 + anti-dsDNA 2
        bilag = {**{d: "E" for d in ADULT_BILAG}, "mucocutaneous": "D", "musculoskeletal": "D", "renal": "D",
                 "haematological": "C"}
        sledai, pga = 4, 0.5
    out += [
        _score(pid, "sledai", "sledai-2k", screen, sledai),
        _score(pid, "selena", "selena-sledai", screen, sledai),
        _score(pid, "pga", "pga", screen, pga),
        T.bilag_assessment(pid, screen, bilag, rid=r("bilag")),
        T.flag(pid, "lldas", screen, False, rid=r("lldas")),
        T.flag(pid, "doris-remission", screen, False, rid=r("doris")),
        T.ecog(pid, screen, "LA9623-5", "Restricted in physically strenuous activity but ambulatory", rid=r("ecog")),
    ]
    # Screening laboratory tests.
    out += _renal_panel(pid, labs, birth, True, o.creatinine, o.creatinine_unit)
    out += [
        _lab(pid, "dsdna", "5130-0", labs, 148, "[IU]/mL", high=30, flag="H"),
        _lab(pid, "c3", "4485-9", labs, 62, "mg/dL", high=180, flag="L"),
        _lab(pid, "c4", "4498-2", labs, 7, "mg/dL", high=40, flag="L"),
        _lab(pid, "alt", "1742-6", labs, 24, "U/L", high=35),
        _lab(pid, "ast", "1920-8", labs, 27, "U/L", high=35),
        _lab(pid, "tbil", "1975-2", labs, 0.5, "mg/dL", high=1.2),
        _lab(pid, "hb", "718-7", labs, 112, "g/L", high=150, flag="L"),
        _lab(pid, "wbc", "6690-2", labs, 3.6, "10*9/L", high=9.5, flag="L"),
        _lab(pid, "neut", "751-8", labs, 2.4, "10*9/L", high=6.3),
        _lab(pid, "lymph", "731-0", labs, 0.8, "10*9/L", high=3.2, flag="L"),
        _lab(pid, "plt", "777-3", labs, 172, "10*9/L", high=350),
        _lab(pid, "cd19", "8116-6", labs, 190, "/uL"),
    ]
    if o.serology:
        out += [
            _qualitative(pid, "hbsag", "5196-1", virology, False),
            _qualitative(pid, "hbcab", "16933-4", virology, False),
            _qualitative(pid, "hcvab", "13955-0", virology, False),
            _qualitative(pid, "hiv", "56888-1", virology, o.hiv_positive),
            _qualitative(pid, "tp", "24110-9", virology, False),
        ]
    out.append(_qualitative(pid, "hcg", "2118-8", ago(at, 5 if o.labs_days_ago <= 10 else o.labs_days_ago), o.hcg_positive))
    # Vital signs, echo, lung function.
    out += [
        _lab(pid, "weight", "29463-7", vitals, 56, "kg", category="vital-signs"),
        _lab(pid, "height", "8302-2", vitals, 160, "cm", category="vital-signs"),
        T.blood_pressure(pid, vitals, 118, 74, rid=r("bp")),
        _lab(pid, "spo2", "59410-1", vitals, 98, "%", category="vital-signs"),
        _lab(pid, "lvef", "18043-0", imaging, o.lvef, "%", category="imaging", flag="L" if o.lvef < 50 else None),
        _lab(pid, "fvc", "19872-1", imaging, 91, "%", category="exam"),
        F.observation(pid, "Local", "dlco-hb-pct-pred", imaging, value=78, unit="%", category="exam", rid=r("dlco")),
    ]
    # Treatment history.
    out += [
        F.medication_statement(pid, "5521", onset + timedelta(days=7), None, dose_mg=200, status="active", rid=r("hcq")),
        F.medication_statement(pid, "8640", nephritis, nephritis + timedelta(days=28), dose_mg=60, rid=r("pred-induction")),
        F.medication_statement(pid, "8640", nephritis + timedelta(days=28), nephritis + timedelta(days=84), dose_mg=30,
                               rid=r("pred-taper")),
        F.medication_statement(pid, "8640", nephritis + timedelta(days=84), ago(at, 240), dose_mg=5,
                               rid=r("pred-maintenance")),
        F.medication_request(pid, "8640", ago(at, 240), None, dose_mg=10, rid=r("pred")),
        F.medication_request(pid, "68149", nephritis, ago(at, 21), dose_mg=1000, per_day=2, status="stopped", rid=r("mmf")),
        F.medication_statement(pid, "1092437", ago(at, 3 * 365), ago(at, 3 * 365 - 548), rid=r("belimumab")),
        F.medication_statement(pid, "42316", ago(at, 420), ago(at, 120), dose_mg=2, per_day=2, rid=r("tacrolimus")),
    ]
    if o.prior_cart:
        out.append(F.procedure(pid, "Local", "car-t-cd19", ago(at, 700), rid=r("car-t")))
    return out


def _adult(**changes: Any) -> Builder:
    options = AdultOptions(**changes)
    return lambda pid, at: adult_record(pid, at, options)


# --------------------------------------------------------------------------------------------
# Other records.
# --------------------------------------------------------------------------------------------

def no_sle(pid: str, at: datetime) -> list[Resource]:
    """A 52-year-old woman referred for hand arthralgia with a low-titre ANA: SLE ruled out
    (anti-dsDNA negative, normal complement and blood count, no lupus diagnosis on record);
    treated hypertension. Nothing lupus-related on her problem list."""
    def r(name: str) -> str:  # stable, readable ids per patient
        return f"{pid}-{name}"

    birth = born(at, 52.3)
    labs = ago(at, 12)
    return [
        F.patient(pid, birth, "female", name="NoLupus"),
        _condition(pid, "htn", ago(at, 6 * 365), ("SNOMEDCT", "38341003", "Hypertensive disorder"),
                   ("ICD10CM", "I10", "Essential (primary) hypertension")),
        F.observation(pid, "LOINC", "5048-4", labs, value_string="1:80", interpretation="POS", rid=r("ana")),
        _lab(pid, "dsdna", "5130-0", labs, 4, "[IU]/mL", high=30),
        _lab(pid, "c3", "4485-9", labs, 128, "mg/dL", high=180),
        _lab(pid, "c4", "4498-2", labs, 27, "mg/dL", high=40),
        *_renal_panel(pid, labs, birth, True, 0.81, "mg/dL"),
        _lab(pid, "alt", "1742-6", labs, 21, "U/L", high=35),
        _lab(pid, "hb", "718-7", labs, 134, "g/L", high=150),
        _lab(pid, "wbc", "6690-2", labs, 6.2, "10*9/L", high=9.5),
        _lab(pid, "plt", "777-3", labs, 254, "10*9/L", high=350),
        T.blood_pressure(pid, labs, 132, 82, rid=r("bp")),
        _lab(pid, "weight", "29463-7", labs, 71, "kg", category="vital-signs"),
    ]


def child_record(pid: str, at: datetime) -> list[Resource]:
    return T.fits_001(pid, at)


def _replace(resources: list[Resource], *new: Resource) -> list[Resource]:
    """`resources` with each resource of `new` in place of the one with its id (or appended)."""
    by_id = {r["id"]: r for r in new}
    out = [by_id.pop(r["id"], r) for r in resources]
    return out + list(by_id.values())


def _child_chronic_hbv(pid: str, at: datetime) -> list[Resource]:
    """child-likely with chronic hepatitis B found at screening, immune-tolerant phase: HBsAg and
    anti-HBc positive, HBV DNA 2.3 x 10^7 IU/mL, normal ALT."""
    when = ago(at, 30)
    return _replace(child_record(pid, at),
                    _qualitative(pid, "hbsag", "5196-1", when, True),
                    _qualitative(pid, "hbcab", "16933-4", when, True),
                    _lab(pid, "hbvdna", "42595-9", when, 23_000_000, "[IU]/mL", high=20, flag="H"))


def _child_isolated_antihbc(pid: str, at: datetime) -> list[Resource]:
    """child-likely with isolated anti-HBc (past infection or passive antibody): HBsAg negative,
    anti-HBc positive, HBV DNA below the limit of detection (<20 IU/mL)."""
    when = ago(at, 30)
    dna = F.observation(pid, "LOINC", "42595-9", when, value=20, comparator="<", unit="[IU]/mL", ref_high=20,
                        interpretation="ND", rid=f"{pid}-hbvdna")
    return _replace(child_record(pid, at), _qualitative(pid, "hbcab", "16933-4", when, True), dna)


# --------------------------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticPatient:
    """One named record: what it is, how to build it, and what every trial must say."""

    name: str
    description: str
    build: Builder
    expected: Mapping[str, str]  # trial id -> verdict
    base: str | None = None  # the record this one changes in ONE thing
    deciding: Mapping[str, frozenset[str]] = field(default_factory=dict)  # trial id -> criterion ids


_BY_KEY = {"t000": T000, "t001": T001, "t002": T002, "t003": T003, "t004": T004}


def _verdicts(default: str, **by_seed: str) -> dict[str, str]:
    """Every trial's verdict: `default`, except the seeds named (t000=..., t004=...)."""
    return {t: default for t in TRIALS} | {_BY_KEY[k]: v for k, v in by_seed.items()}


def _deciding(**by_seed: Iterable[str]) -> dict[str, frozenset[str]]:
    return {_BY_KEY[k]: frozenset(v) for k, v in by_seed.items()}


ADULT_LIKELY = dict(t000=LIKELY, t002=LIKELY, t003=LIKELY, t004=LIKELY)

_ENTRIES: list[SyntheticPatient] = [
    SyntheticPatient(
        "adult-likely",
        "Woman of 29 with refractory SLE (class IV lupus nephritis 5 years ago, now active skin and joint "
        "disease: SLEDAI-2K/SELENA-SLEDAI 12, PGA 2, BILAG 2B) after hydroxychloroquine, prednisone, "
        "mycophenolate, belimumab and tacrolimus; complete, recent work-up. Likely eligible for every adult "
        "trial (000, 002, 003, 004); over 001's age range (5-18).",
        _adult(), _verdicts(EXCLUDED, **ADULT_LIKELY),
        deciding=_deciding(t001={"001-I1"})),
    SyntheticPatient(
        "adult-missing-serology",
        "adult-likely without hepatitis B/C, HIV and syphilis serology on record. Possibly eligible where "
        "the trial needs that serology (002, 003, 004); 000 asks for none and stays likely.",
        _adult(serology=False), _verdicts(EXCLUDED, t000=LIKELY, t002=POSSIBLY, t003=POSSIBLY, t004=POSSIBLY),
        base="adult-likely", deciding=_deciding(t002={"002-E6"}, t003={"003-E5", "003-E6"}, t004={"004-E6", "004-E7"})),
    SyntheticPatient(
        "no-sle",
        "Woman of 52 with hand arthralgia and a low-titre ANA (1:80); anti-dsDNA negative, normal complement; "
        "treated hypertension; no lupus diagnosis. Excluded from every trial (no SLE).",
        no_sle, _verdicts(EXCLUDED),
        deciding=_deciding(t000={"000-I3", "000-I4"}, t001={"001-I1", "001-I2"}, t002={"002-I2"}, t003={"003-I2", "003-I6"},
                           t004={"004-I2"})),
    SyntheticPatient(
        "child-likely",
        "Girl of 14 with refractory childhood-onset SLE (SLEDAI-2K 12) after 15 weeks of prednisone 1 mg/kg/d, "
        "hydroxychloroquine, mycophenolate and belimumab; complete screening. Fits 001 (the trial's own fitting "
        "patient, `fits_001`); too young for the adult trials.",
        child_record, _verdicts(EXCLUDED, t001=LIKELY)),
    SyntheticPatient(
        "fits-000",
        "The fitting patient of trial 000 (`fits_000`): woman of 34, SELENA-SLEDAI 12, PGA 2, BILAG 1A+1B, "
        "on hydroxychloroquine, prednisone 15 mg/d and mycophenolate. Likely for 000; possibly for the other adult "
        "trials (a record made for one trial lacks what the others ask: SLEDAI-2K, echo, CD19 count, ...).",
        lambda pid, at: T.fits_000(pid, at),
        _verdicts(EXCLUDED, t000=LIKELY, t002=POSSIBLY, t003=POSSIBLY, t004=POSSIBLY)),
    SyntheticPatient(
        "fits-002",
        "The fitting patient of trial 002 (`fits_002`): woman of 31, SLEDAI-2K 16, refractory to 4 months of "
        "prednisone 60 mg/d, hydroxychloroquine, mycophenolate, belimumab and tacrolimus (still taking it). "
        "Likely for 002; possibly for the other adult trials (their data is not in this record).",
        lambda pid, at: T.fits_002(pid, at),
        _verdicts(EXCLUDED, t000=POSSIBLY, t002=LIKELY, t003=POSSIBLY, t004=POSSIBLY)),
    SyntheticPatient(
        "fits-003",
        "The fitting patient of trial 003 (`fits_003`): woman of 35 with class IV lupus nephritis, SLEDAI-2K 14, "
        "BILAG renal A, on prednisolone and mycophenolic acid after tacrolimus, belimumab and rituximab. "
        "Likely for 003; possibly for the other adult trials (their data is not in this record).",
        lambda pid, at: T.fits_003(pid, at),
        _verdicts(EXCLUDED, t000=POSSIBLY, t002=POSSIBLY, t003=LIKELY, t004=POSSIBLY)),
    SyntheticPatient(
        "fits-004",
        "The fitting patient of trial 004 (`fits_004`): woman of 36, SELENA-SLEDAI 12, CD19+ B cells 210/uL, "
        "mycophenolate stopped 3 weeks ago for the washout. Likely for 004; possibly for the other adult trials "
        "(their data is not in this record).",
        lambda pid, at: T.fits_004(pid, at),
        _verdicts(EXCLUDED, t000=POSSIBLY, t002=POSSIBLY, t003=POSSIBLY, t004=LIKELY)),
    # Single-failure variants of adult-likely.
    SyntheticPatient(
        "too-young",
        "adult-likely aged 16 (childhood-onset SLE at 9): too young for every adult trial. Within 001's age "
        "range, but her record lacks what 001 needs to decide (a 90-day high-dose glucocorticoid course, CMV DNA).",
        _adult(age_years=16.5), _verdicts(EXCLUDED, t001=POSSIBLY), base="adult-likely",
        deciding=_deciding(t000={"000-I2"}, t002={"002-I1"}, t003={"003-I1"}, t004={"004-I1"},
                           t001={"001-I2", "001-E8"})),
    SyntheticPatient(
        "too-old",
        "adult-likely aged 72 (same creatinine, so the lab's eGFR is 89): over the age limit of 000 (70) and "
        "003 (65); 002 (no upper limit) and 004 (90) stay likely.",
        _adult(age_years=72.4), _verdicts(EXCLUDED, t002=LIKELY, t004=LIKELY), base="adult-likely",
        deciding=_deciding(t000={"000-I2"}, t003={"003-I1"})),
    SyntheticPatient(
        "low-activity",
        "adult-likely serologically active but clinically quiescent: SLEDAI-2K and SELENA-SLEDAI 4 (low "
        "complement 2, anti-dsDNA 2), PGA 0.5, no BILAG A or B. Excluded by every activity criterion.",
        _adult(activity="low"), _verdicts(EXCLUDED), base="adult-likely",
        deciding=_deciding(t000={"000-I4"}, t002={"002-I2", "002-I3"}, t003={"003-I5"}, t004={"004-I3"})),
    SyntheticPatient(
        "low-lvef",
        "adult-likely with an echo LVEF of 40 %: below 003 (>45 %) and 004 (>=50 %); 000 and 002 set no LVEF "
        "limit and stay likely.",
        _adult(lvef=40), _verdicts(EXCLUDED, t000=LIKELY, t002=LIKELY), base="adult-likely",
        deciding=_deciding(t003={"003-I9"}, t004={"004-I9"})),
    SyntheticPatient(
        "low-egfr",
        "adult-likely with chronic kidney disease stage 4 after lupus nephritis: creatinine 2.6 mg/dL, eGFR 25 "
        "(CKD-EPI 2021 for a woman of 29), Cockcroft-Gault 28 mL/min. Excluded by 002 (eGFR < 30), 003 "
        "(irreversible kidney damage: CKD on the problem list, and creatinine clearance < 30) and 004 "
        "(creatinine > 2.5 mg/dL, CrCl < 30).",
        _adult(creatinine=2.6, ckd=True), _verdicts(EXCLUDED, t000=LIKELY), base="adult-likely",
        deciding=_deciding(t002={"002-E3"}, t003={"003-E3"}, t004={"004-E1", "004-I9"})),
    SyntheticPatient(
        "creatinine-umol-high",
        "adult-likely whose lab reports creatinine in SI units: 230 umol/L (2.60 mg/dL, above 004's 221 umol/L), "
        "eGFR 25, no chronic kidney disease on record. Excluded by 004 (creatinine) and 002 (eGFR); possibly "
        "eligible for 003, whose exclusion needs irreversible kidney damage as well as a clearance below 30 (the "
        "investigator judges whether it is).",
        _adult(creatinine=230, creatinine_unit="umol/L"), _verdicts(EXCLUDED, t000=LIKELY, t003=POSSIBLY),
        base="adult-likely", deciding=_deciding(t002={"002-E3"}, t003={"003-E3"}, t004={"004-E1", "004-I9"})),
    SyntheticPatient(
        "stale-labs",
        "adult-likely whose screening blood tests are all 6 months old (scores, echo and lung function current): "
        "possibly eligible wherever a lab decides; 000 decides on scores and history only.",
        _adult(labs_days_ago=182), _verdicts(EXCLUDED, t000=LIKELY, t002=POSSIBLY, t003=POSSIBLY, t004=POSSIBLY),
        base="adult-likely",
        deciding=_deciding(t002={"002-I5", "002-E3", "002-E9"}, t003={"003-I7", "003-I8", "003-I13", "003-E4", "003-E8"},
                           t004={"004-I4", "004-I5", "004-I6", "004-I7", "004-I8", "004-I9", "004-I11", "004-E1", "004-E14"})),
    SyntheticPatient(
        "hiv-positive",
        "adult-likely with a positive HIV-1/2 antigen/antibody screen. Excluded by 002, 003 and 004; 000's seed "
        "lists no exclusion criteria, so it stays likely (the investigator decides).",
        _adult(hiv_positive=True), _verdicts(EXCLUDED, t000=LIKELY), base="adult-likely",
        deciding=_deciding(t002={"002-E6"}, t003={"003-E5"}, t004={"004-E6"})),
    SyntheticPatient(
        "prior-cart",
        "adult-likely who received CD19 CAR-T cells 23 months ago (B cells have returned). Excluded by 004 "
        "(prior CD19/BCMA therapy); 000, 002 and 003 list no prior-CAR-T exclusion and stay likely.",
        _adult(prior_cart=True), _verdicts(EXCLUDED, t000=LIKELY, t002=LIKELY, t003=LIKELY), base="adult-likely",
        deciding=_deciding(t004={"004-E15"})),
    SyntheticPatient(
        "pregnant",
        "adult-likely with a positive serum hCG 5 days ago. Excluded by 002, 003 and 004; 000's seed asks only "
        "for contraception (clinician review), so it stays likely.",
        _adult(hcg_positive=True), _verdicts(EXCLUDED, t000=LIKELY), base="adult-likely",
        deciding=_deciding(t002={"002-I5", "002-E9"}, t003={"003-I13", "003-E8"}, t004={"004-I11", "004-E14"})),
    SyntheticPatient(
        "malignancy",
        "adult-likely with diffuse large B-cell lymphoma diagnosed 3 weeks ago. Excluded by 002, 003 and 004; "
        "000 lists no exclusions and stays likely.",
        _adult(lymphoma=True), _verdicts(EXCLUDED, t000=LIKELY), base="adult-likely",
        deciding=_deciding(t002={"002-E10"}, t003={"003-E1"}, t004={"004-E17"})),
    SyntheticPatient(
        "drug-induced-lupus-only",
        "adult-likely whose problem list holds drug-induced lupus (SNOMED 201436003, ICD-10-CM M32.0) instead of "
        "SLE and lupus nephritis. Drug-induced lupus is not SLE: excluded from every trial.",
        _adult(diagnosis="drug-induced"), _verdicts(EXCLUDED), base="adult-likely",
        deciding=_deciding(t000={"000-I3"}, t002={"002-I2"}, t003={"003-I2"}, t004={"004-I2"})),
    # Single-failure variants of child-likely (trial 001's hepatitis B rule).
    SyntheticPatient(
        "hbsag-positive-dna-high",
        "child-likely with chronic hepatitis B (immune-tolerant: HBsAg and anti-HBc positive, HBV DNA "
        "2.3 x 10^7 IU/mL, normal ALT). Excluded by 001.",
        _child_chronic_hbv, _verdicts(EXCLUDED), base="child-likely", deciding=_deciding(t001={"001-E8"})),
    SyntheticPatient(
        "antihbc-positive-dna-undetectable",
        "child-likely with isolated anti-HBc (HBsAg negative, HBV DNA < 20 IU/mL, undetectable): no active HBV "
        "infection, so 001 still likely.",
        _child_isolated_antihbc, _verdicts(EXCLUDED, t001=LIKELY), base="child-likely"),
]

REGISTRY: dict[str, SyntheticPatient] = {p.name: p for p in _ENTRIES}
# The patient who fits each trial (child-likely is trial 001's own fitting patient).
FITS = {T000: "fits-000", T001: "child-likely", T002: "fits-002", T003: "fits-003", T004: "fits-004"}


# --------------------------------------------------------------------------------------------
# Generation.
# --------------------------------------------------------------------------------------------

def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("the evaluation time needs a UTC offset (e.g. 2026-11-26T09:00:00Z)")
    return at.astimezone(UTC)


def _add_displays(node: Any) -> None:
    if isinstance(node, dict):
        key = (node.get("system"), node.get("code"))
        if isinstance(key[1], str) and "display" not in node and key in EXTRA_DISPLAYS:
            node["display"] = EXTRA_DISPLAYS[key]
        for value in node.values():
            _add_displays(value)
    elif isinstance(node, list):
        for value in node:
            _add_displays(value)


def _finalise(pid: str, resources: Iterable[Resource]) -> list[Resource]:
    """Ids unique across all patients (a FHIR server holds them side by side): `<pid>-<id>`;
    codings get the display an EHR would send."""
    out = []
    for res in resources:
        res = json.loads(json.dumps(res))  # no sharing between bundles
        _add_displays(res)
        if res["resourceType"] != "Patient" and not str(res["id"]).startswith(f"{pid}-"):
            res["id"] = f"{pid}-{res['id']}"
        out.append(res)
    ids = [f"{r['resourceType']}/{r['id']}" for r in out]
    if len(ids) != len(set(ids)):
        raise ValueError(f"{pid}: duplicate resource ids")
    return out


def to_bundle(pid: str, resources: Iterable[Resource], at: datetime) -> dict[str, Any]:
    entries = [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources]
    return {"resourceType": "Bundle", "id": pid, "type": "collection", "timestamp": F.iso(at), "entry": entries}


def build_patient(name: str, builder: Builder, at: datetime) -> dict[str, Any]:
    F.reset_ids()
    return to_bundle(name, _finalise(name, builder(name, _utc(at))), _utc(at))


def generate(at: datetime, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Every registry patient (or those named) as a collection Bundle; same `at`, same bytes."""
    return {name: build_patient(name, REGISTRY[name].build, at) for name in (names or REGISTRY)}


# --------------------------------------------------------------------------------------------
# Randomised (seeded) variations for benchmarks.
# --------------------------------------------------------------------------------------------

_RANDOM_BASES = ["adult-likely", "adult-likely", "adult-likely", "child-likely", "fits-000", "fits-002", "fits-003",
                 "fits-004"]
_ADULT_CHANGES: list[dict[str, Any]] = [
    {}, {}, {}, {"serology": False}, {"activity": "low"}, {"lvef": 40}, {"creatinine": 2.6}, {"labs_days_ago": 182},
    {"hiv_positive": True}, {"prior_cart": True}, {"hcg_positive": True}, {"lymphoma": True},
    {"diagnosis": "drug-induced"}, {"age_years": 72.4},
]


RENAL_CODES = {"2160-0", "14682-9", "98979-8"}  # creatinine and the lab's eGFR stay consistent


def _jitter(resources: list[Resource], rng: random.Random) -> list[Resource]:
    """Lab values within +/-12 % (not creatinine/eGFR, computed together), now and then a missing test."""
    out = []
    for res in resources:
        if res["resourceType"] == "Observation" and res.get("category", [{}])[0].get("coding", [{}])[0].get("code") == "laboratory":
            if rng.random() < 0.05:
                continue
            q = res.get("valueQuantity")
            codes = {c.get("code") for c in res["code"]["coding"]}
            if q and "comparator" not in q and not codes & RENAL_CODES and isinstance(q.get("value"), (int, float)):
                value = q["value"] * rng.uniform(0.88, 1.12)
                q["value"] = round(value, 2) if value < 10 else round(value, 1) if value < 100 else round(value)
        out.append(res)
    return out


def random_patient(index: int, at: datetime, seed: int = 0) -> dict[str, Any]:
    """A seeded variation of one of the bases: another age, lab values, sometimes one failure."""
    rng = random.Random(f"trial-cds:{seed}:{index}")
    pid = f"random-{index:04d}"
    base = rng.choice(_RANDOM_BASES)
    if base == "adult-likely":
        change = dict(rng.choice(_ADULT_CHANGES))
        change.setdefault("age_years", round(rng.uniform(19.2, 64.8), 1))
        change.setdefault("lvef", rng.choice([55, 58, 60, 62, 65, 68]))
        builder = _adult(**change)
    else:
        builder = REGISTRY[base].build
    F.reset_ids()
    resources = _jitter(_finalise(pid, builder(pid, _utc(at))), rng)
    return to_bundle(pid, resources, _utc(at))


# --------------------------------------------------------------------------------------------
# CDS Hooks requests and files.
# --------------------------------------------------------------------------------------------

def advertised_queries(catalogue_dir: Path = BUNDLES_DIR) -> list[PrefetchQuery]:
    """The prefetch queries the service advertises for this catalogue, computed by the service's
    own catalogue code (`cds.ruleset.build_ruleset`), so the requests cannot drift from discovery."""
    from ..ruleset import build_ruleset
    from ..settings import Settings

    rules = build_ruleset(Settings(catalogue=str(catalogue_dir), pool_size=1))
    try:
        return list(rules.queries)
    finally:
        rules.retire()


def hook_request(name: str, bundle: Mapping[str, Any], queries: Iterable[PrefetchQuery]) -> dict[str, Any]:
    """A complete patient-view request body, prefetch answered from the patient's Bundle."""
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid5(HOOK_NAMESPACE, name)),
        "context": {"userId": "Practitioner/example", "patientId": name},
        "prefetch": prefetch_for(bundle, list(queries), name),
    }


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def readme(at: datetime) -> str:
    """What each patient is, the verdicts the rules give, and how to regenerate."""
    seeds = " | ".join(SEED_OF[t] for t in TRIALS)
    short = {LIKELY: "likely", POSSIBLY: "possibly", EXCLUDED: "excluded"}
    lines = [
        "# Synthetic patients",
        "",
        "Synthetic, clinically coherent FHIR R4 records for the demo, the tests and the benchmarks. No real patient "
        "data. Generated by `cds/synthetic/patients.py` (the registry there is the source of truth); do not edit "
        "these files by hand.",
        "",
        f"- Evaluation date: **{F.iso(_utc(at))}**. Every date in a record is relative to it (some long-past history of "
        "the per-trial fitting patients is dated absolutely), so evaluate them at this date.",
        "- `<name>.json`: the patient's record, a `collection` Bundle (Patient id = file name; other ids are "
        "`<name>-...`).",
        "- `hooks/<name>.json`: a complete CDS Hooks `patient-view` request for that patient, prefetch answered with "
        "the templates the service advertises in discovery (`POST` it to `/cds-services/sle-car-t-trials`).",
        "- Regenerate: `python -m cds.synthetic.patients --at 2026-11-26T09:00:00Z --out fhir_bundles/patients` "
        "(a test fails when these files differ from the generator's output). `--count N` adds N seeded, randomised "
        "variations (`random-NNNN.json`, for benchmarks; not committed).",
        "- Evaluate one: `trial-cds evaluate fhir_bundles/patients/adult-likely.json --at 2026-11-26T09:00:00Z`.",
        "",
        "Codes are those of shared/codes.md only. Trials by seed: 000 `tongji-cd19-bcma-cart-sle` (18-70), "
        "001 `zju-children-cd19-cart-sle` (5-18), 002 `nct07318259` (18+), 003 `nct06710717` (18-65), "
        "004 `nct06350110` (18-90).",
        "",
        "## Patients and their verdicts",
        "",
        "Verdicts as the rules give them at the evaluation date (checked by tests/trials/test_verdicts.py); "
        "\"deciding\" lists the criteria that make a changed verdict.",
        "",
        f"| patient | base | {seeds} | what it is |",
        "|---|---|" + "---|" * len(TRIALS) + "---|",
    ]
    for p in _ENTRIES:
        cells = " | ".join(short.get(p.expected.get(t, ""), "?") for t in TRIALS)
        deciding = "; ".join(f"{SEED_OF[t]}: {', '.join(sorted(ids))}" for t, ids in p.deciding.items())
        what = p.description + (f" Deciding: {deciding}." if deciding else "")
        lines.append(f"| `{p.name}` | {p.base or ''} | {cells} | {what} |")
    lines += [
        "",
        "`fits-000` ... `fits-004` are the fitting patients of the per-criterion tests "
        "(`cds/synthetic/trial_records.py`, `fits_00N`); `child-likely` is trial 001's.",
        "",
    ]
    return "\n".join(lines)


def write(out_dir: Path, at: datetime, *, count: int = 0, seed: int = 0, catalogue_dir: Path = BUNDLES_DIR) -> list[Path]:
    """Write every registry patient, its hook request and the README; plus `count` random ones."""
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(catalogue_dir).resolve():
        raise ValueError("patients must not be written into the trial catalogue directory")
    (out_dir / "hooks").mkdir(parents=True, exist_ok=True)
    queries = advertised_queries(catalogue_dir)
    written = []
    for name, bundle in generate(at).items():
        for path, doc in ((out_dir / f"{name}.json", bundle), (out_dir / "hooks" / f"{name}.json", hook_request(name, bundle, queries))):
            path.write_text(dumps(doc), encoding="utf-8")
            written.append(path)
    (out_dir / "README.md").write_text(readme(at), encoding="utf-8")
    written.append(out_dir / "README.md")
    for i in range(1, count + 1):
        path = out_dir / f"random-{i:04d}.json"
        path.write_text(dumps(random_patient(i, at, seed)), encoding="utf-8")
        written.append(path)
    return written


def _parse_at(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cds.synthetic.patients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", default=F.iso(DEFAULT_AT), help="evaluation date-time the records are dated from (ISO 8601)")
    parser.add_argument("--out", type=Path, default=PATIENTS_DIR, help="output directory (default fhir_bundles/patients)")
    parser.add_argument("--count", type=int, default=0, help="extra seeded, randomised patients for benchmarks (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the randomised patients")
    args = parser.parse_args(argv)
    try:
        at = _parse_at(args.at)
    except ValueError:
        parser.error(f"--at is not an ISO date-time: {args.at}")
    if args.count < 0:
        parser.error("--count must be 0 or more")
    written = write(args.out, at, count=args.count, seed=args.seed)
    print(f"{len(written)} files written in {args.out} (evaluation date {F.iso(_utc(at))})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
