"""Per-criterion tests for seed 001, `zju-children-cd19-cart-sle` (CD19 CAR-T, children 5-18).

`fits(pid, at)` is a child who meets every data-decidable inclusion and no exclusion; the
synthetic patient generator reuses it. Every other case starts from it and changes one
thing, so a case shows which datum decides the criterion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

# The child who fits the trial lives in the package (the synthetic patient generator uses it).
from cds.synthetic.trial_records import ago as _ago
from cds.synthetic.trial_records import born as _born
from cds.synthetic.trial_records import fits_001 as fits
from cds.synthetic.trial_records import negative_result as _neg
from cds.trialmeta import load_trial
from tests.conftest import EVAL_AT
from tests.trials.kit import Chart, evaluate_trial, missing_codes, replacing, without

TRIAL = "zju-children-cd19-cart-sle"
Resource = dict[str, Any]


# ---------------------------------------------------------------------------------------
# Variants of the fitting child. Each changes what one or more criteria depend on; a
# variant may carry changes for several *different* criteria at once (each test reads only
# its own define), so the module needs few engine calls. Results are cached per variant.
# ---------------------------------------------------------------------------------------
PID = "p001"


# The kit's builders bound to this module's patient (times are the dates the variants compute).
C = Chart(PID, EVAL_AT)
_obs, _pos, _cond = C.obs, C.pos, C.cond


def _without(res: list[Resource], *suffixes: str) -> list[Resource]:
    return without(res, *(f"{PID}-{s}" for s in suffixes))


def _with(res: list[Resource], *new: Resource, drop: Iterable[str] = ()) -> list[Resource]:
    """`res` without the resources in `drop` and without any resource `new` replaces (same id)."""
    return replacing(_without(res, *drop), *new)


def _v_fits(at: datetime) -> list[Resource]:
    return fits(PID, at)


def _v_bare(at: datetime) -> list[Resource]:
    """A 14-year-old girl with nothing else on record."""
    return [C.patient(_born(at, 14.5), "female")]


def _v_stale(at: datetime) -> list[Resource]:
    """Every measurement older than its window (scores/labs 90 d, LVEF/serology 12 mo)."""
    old = _ago(at, 120)
    older = _ago(at, 400)
    return _with(fits(PID, at),
                 _obs("sledai-2k", old, "sledai", system="Local", value=11, unit="{score}", category="survey"),
                 _obs("10230-1", older, "lvef", value=63, unit="%", category="imaging"),
                 _obs("2160-0", old, "creat", value=0.5, unit="mg/dL", ref_high=0.9),
                 _obs("1920-8", old, "ast", value=25, unit="U/L", ref_high=40),
                 _obs("1742-6", old, "alt", value=20, unit="U/L", ref_high=35),
                 _obs("14631-6", old, "tbil", value=8, unit="umol/L", ref_high=21),
                 _obs("59408-5", old, "spo2", value=98, unit="%", category="vital-signs"),
                 _obs("2118-8", old, "hcg", value_code=("SNOMEDCT", "260385009"), interpretation="NEG"),
                 _neg(PID, "5196-1", older, f"{PID}-hbsag"),
                 _neg(PID, "16933-4", older, f"{PID}-hbcab"),
                 _neg(PID, "13955-0", older, f"{PID}-hcvab"),
                 _neg(PID, "56888-1", older, f"{PID}-hiv"),
                 _neg(PID, "24110-9", older, f"{PID}-tp"),
                 _obs("72493-0", old, "cmv", value=34.5, comparator="<", unit="[IU]/mL", ref_high=34.5, interpretation="ND"))


def _v_male_18(at: datetime) -> list[Resource]:
    """A boy aged 18 years 6 months (upper age threshold included), no pregnancy test."""
    return _with(fits(PID, at), C.patient(_born(at, 18.5), "male"), drop=["hcg"])


def _v_girl_8(at: datetime) -> list[Resource]:
    """An 8-year-old girl, no pregnancy test (not of childbearing age)."""
    return _with(fits(PID, at), C.patient(_born(at, 8.3), "female"), drop=["hcg"])


def _v_woman_19_pregnant(at: datetime) -> list[Resource]:
    """A 19-year-old woman with a positive serum hCG."""
    return _with(fits(PID, at), C.patient(_born(at, 19.2), "female"), _pos("2118-8", _ago(at, 5), "hcg"))


def _v_no_birthdate_urine_hcg(at: datetime) -> list[Resource]:
    """Birth date not recorded; a positive urine hCG and no serum hCG."""
    return _with(fits(PID, at), C.patient(None, "female"), _pos("2106-3", _ago(at, 5), "hcg-urine"), drop=["hcg"])


def _v_drug_induced_lupus(at: datetime) -> list[Resource]:
    return _with(fits(PID, at), _cond("SNOMEDCT", "201436003", _ago(at, 900), "dil"), drop=["sle"])


def _v_low_scores(at: datetime) -> list[Resource]:
    """EULAR/ACR 2019 score 8 (does not classify) and SLEDAI-2K 6."""
    return _with(fits(PID, at),
                 _obs("eular-acr-2019", _ago(at, 4 * 365 - 14), "eular", system="Local", value=8, unit="{score}", category="survey"),
                 _obs("sledai-2k", _ago(at, 10), "sledai", system="Local", value=6, unit="{score}", category="survey"))


def _v_missing_score_lvef_cmv(at: datetime) -> list[Resource]:
    """No EULAR/ACR 2019 score, no LVEF, no CMV DNA (other serology negative)."""
    return _without(fits(PID, at), "eular", "lvef", "cmv")


def _v_weak_drugs(at: datetime) -> list[Resource]:
    """Prednisone 20 mg/d (0.53 mg/kg/d), no hydroxychloroquine, MMF only."""
    course = _ago(at, 600)
    return _with(fits(PID, at),
                 C.medrq("8640", course, course + timedelta(days=105), dose_mg=20, status="completed",
                                      name="pred-high"),
                 drop=["hcq", "belimumab"])


def _v_open_course_mpa(at: datetime) -> list[Resource]:
    """High-dose prednisone order completed but with no end date; MMF then mycophenolic acid."""
    course = _ago(at, 600)
    return _with(fits(PID, at),
                 C.medrq("8640", course, None, dose_mg=40, status="completed", name="pred-high"),
                 C.medst("7145", _ago(at, 199), _ago(at, 1), dose_mg=720, per_day=2,
                                        name="mpa"),
                 drop=["belimumab"])


def _v_rituximab_cyclophosphamide(at: datetime) -> list[Resource]:
    """Cyclophosphamide monthly pulses (4, one record each) and rituximab 4 months ago."""
    pulses = [C.medst("3002", _ago(at, d), None, dose_mg=500, name=f"cyc-{d}")
              for d in (230, 200, 170, 140)]
    rtx = C.medrq("121191", _ago(at, 120), _ago(at, 106), status="completed",
                               name="rtx")
    return _with(fits(PID, at), *pulses, rtx, drop=["mmf", "belimumab"])


def _v_refills_recent_rtx_no_weight(at: datetime) -> list[Resource]:
    """MMF as three 45-day refills (5-day gaps), rituximab 30 days ago; no weight or height."""
    mmf = [C.medrq("68149", _ago(at, s), _ago(at, s - 45), dose_mg=750, per_day=2,
                                status="completed", name=f"mmf-{s}") for s in (400, 350, 300)]
    rtx = C.medrq("121191", _ago(at, 30), _ago(at, 16), status="completed",
                               name="rtx")
    return _with(fits(PID, at), *mmf, rtx, drop=["mmf", "belimumab", "weight", "weight-course", "height"])


def _v_exclusions_1(at: datetime) -> list[Resource]:
    """LVEF 48 %; prior CD19 CAR-T, new CNS lupus, dialysis, repaired congenital heart disease,
    sepsis, HSCT, active hepatitis B, MMR 2 weeks ago, leukaemia (ICD-10-CM)."""
    return _with(fits(PID, at),
                 _obs("10230-1", _ago(at, 20), "lvef", value=48, unit="%", category="imaging"),
                 C.proc("Local", "car-t-cd19", _ago(at, 700), "cart"),
                 _cond("SNOMEDCT", "1144942002", _ago(at, 30), "nplupus"),
                 C.proc("SNOMEDCT", "302497006", _ago(at, 30), "hd"),
                 _cond("ICD10CM", "Q24.9", _ago(at, 14 * 365), "chd", clinical_status="resolved"),
                 _cond("SNOMEDCT", "91302008", _ago(at, 3), "sepsis"),
                 C.proc("SNOMEDCT", "234336002", _ago(at, 1500), "hsct"),
                 _pos("5196-1", _ago(at, 30), "hbsag"),
                 _obs("42595-9", _ago(at, 30), "hbvdna", value=230000, unit="[IU]/mL", ref_high=20, interpretation="H"),
                 C.vaccine("03", _ago(at, 14), "mmr"),
                 _cond("ICD10CM", "C91.00", _ago(at, 2000), "all", clinical_status="remission"))


def _v_exclusions_2(at: datetime) -> list[Resource]:
    """Creatinine 2.8 mg/dL; CAR-T product, older active CNS lupus, active lupus nephritis,
    MI 2 months ago, bacterial infection, kidney transplant status, active hepatitis C, HIV
    infection diagnosis, zoster vaccine of unspecified formulation, resolved malignancy coded
    372087000 without a display."""
    return _with(fits(PID, at),
                 _obs("2160-0", _ago(at, 10), "creat", value=2.8, unit="mg/dL", ref_high=0.9),
                 C.medrq("1986438", _ago(at, 800), None, status="completed", name="tisa"),
                 _cond("SNOMEDCT", "95644001", _ago(at, 365), "nplupus"),
                 _cond("SNOMEDCT", "68815009", _ago(at, 500), "ln"),
                 _cond("SNOMEDCT", "57054005", _ago(at, 60), "ami"),
                 _cond("SNOMEDCT", "87628006", _ago(at, 4), "infection"),
                 _cond("ICD10CM", "Z94.0", _ago(at, 900), "ktx"),
                 _pos("13955-0", _ago(at, 30), "hcvab"),
                 _obs("11011-4", _ago(at, 30), "hcvrna", value=1200000, unit="[IU]/mL", ref_high=15),
                 _cond("SNOMEDCT", "86406008", _ago(at, 700), "hivdx"),
                 C.vaccine("188", _ago(at, 10), "zoster"),
                 _cond("SNOMEDCT", "372087000", _ago(at, 2500), "cancer", clinical_status="resolved"))


def _v_exclusions_3(at: datetime) -> list[Resource]:
    """ALT 150 U/L (ULN 35); resolved CNS lupus 2 years ago, dialysis 6 months ago, VT, sepsis
    resolved 3 months ago, GVHD, HIV test positive, MMR 6 weeks ago, quantitative hCG 1250."""
    return _with(fits(PID, at),
                 _obs("1742-6", _ago(at, 10), "alt", value=150, unit="U/L", ref_high=35),
                 _cond("SNOMEDCT", "95644001", _ago(at, 730), "nplupus", clinical_status="resolved"),
                 C.proc("SNOMEDCT", "302497006", _ago(at, 183), "hd"),
                 _cond("SNOMEDCT", "25569003", _ago(at, 20), "vt"),
                 _cond("SNOMEDCT", "91302008", _ago(at, 90), "sepsis", clinical_status="resolved"),
                 _cond("SNOMEDCT", "234646005", _ago(at, 40), "gvhd"),
                 _pos("56888-1", _ago(at, 30), "hiv"),
                 C.vaccine("03", _ago(at, 42), "mmr"),
                 _obs("19080-1", _ago(at, 5), "hcg", value=1250, unit="m[IU]/mL", ref_high=5, interpretation="H"))


def _v_exclusions_4(at: datetime) -> list[Resource]:
    """Total bilirubin 50 umol/L (ULN 21); pericardial effusion; sepsis 5 days ago, already
    resolved; HBsAg positive with HBV DNA below the assay limit; treponemal antibody positive."""
    return _with(fits(PID, at),
                 _cond("SNOMEDCT", "91302008", _ago(at, 5), "sepsis", clinical_status="resolved"),
                 _obs("14631-6", _ago(at, 10), "tbil", value=50, unit="umol/L", ref_high=21),
                 _cond("ICD10CM", "I31.39", _ago(at, 15), "effusion"),
                 _pos("5196-1", _ago(at, 30), "hbsag"),
                 _obs("42595-9", _ago(at, 30), "hbvdna", value=20, comparator="<", unit="[IU]/mL", ref_high=20,
                      interpretation="ND"),
                 _pos("24110-9", _ago(at, 30), "tp"))


def _v_exclusions_5(at: datetime) -> list[Resource]:
    """SpO2 90 %; myocarditis; HBsAg positive without HBV DNA; RPR positive, no treponemal test."""
    return _with(fits(PID, at),
                 _obs("59408-5", _ago(at, 10), "spo2", value=90, unit="%", category="vital-signs"),
                 _cond("ICD10CM", "I40.9", _ago(at, 25), "myocarditis"),
                 _pos("5196-1", _ago(at, 30), "hbsag"),
                 _pos("20507-0", _ago(at, 30), "rpr"),
                 drop=["tp"])


def _v_exclusions_6(at: datetime) -> list[Resource]:
    """AST 130 U/L (3.25 x ULN); MI 2 years ago; HCV antibody positive with RNA not detected;
    RPR positive with a negative treponemal test; CMV DNA 1500 IU/mL."""
    return _with(fits(PID, at),
                 _obs("1920-8", _ago(at, 10), "ast", value=130, unit="U/L", ref_high=40),
                 _cond("SNOMEDCT", "57054005", _ago(at, 730), "ami"),
                 _pos("13955-0", _ago(at, 30), "hcvab"),
                 _obs("11011-4", _ago(at, 30), "hcvrna", value_code=("SNOMEDCT", "260415000"), interpretation="ND"),
                 _pos("20507-0", _ago(at, 30), "rpr"),
                 _obs("72493-0", _ago(at, 20), "cmv", value=1500, unit="[IU]/mL", ref_high=34.5, interpretation="H"))


VARIANTS: dict[str, Callable[[datetime], list[Resource]]] = {
    "fits": _v_fits,
    "bare": _v_bare,
    "stale": _v_stale,
    "male-18": _v_male_18,
    "girl-8": _v_girl_8,
    "woman-19-pregnant": _v_woman_19_pregnant,
    "no-birthdate-urine-hcg": _v_no_birthdate_urine_hcg,
    "drug-induced-lupus": _v_drug_induced_lupus,
    "low-scores": _v_low_scores,
    "missing-score-lvef-cmv": _v_missing_score_lvef_cmv,
    "weak-drugs": _v_weak_drugs,
    "open-course-mpa": _v_open_course_mpa,
    "rituximab-cyclophosphamide": _v_rituximab_cyclophosphamide,
    "refills-recent-rtx-no-weight": _v_refills_recent_rtx_no_weight,
    "exclusions-1": _v_exclusions_1,
    "exclusions-2": _v_exclusions_2,
    "exclusions-3": _v_exclusions_3,
    "exclusions-4": _v_exclusions_4,
    "exclusions-5": _v_exclusions_5,
    "exclusions-6": _v_exclusions_6,
}

_CACHE: dict[str, dict[str, Any]] = {}


def _results(engine: Any, at: datetime, variant: str) -> dict[str, Any]:
    if variant not in _CACHE:
        _CACHE[variant] = evaluate_trial(engine, TRIAL, VARIANTS[variant](at), at)
    return _CACHE[variant]


def _day(at: datetime, days: float) -> str:
    return _ago(at, days).date().isoformat()


def _date(ev: dict[str, Any]) -> str | None:
    d = ev.get("date")
    if isinstance(d, dict):
        d = d.get("value")
    return d[:10] if d else None


def _check(result: dict[str, Any], status: str, *, ev: dict[str, Any] | None = None, note: str | None = None,
           missing: set[str] | None = None, no_missing: bool = False) -> None:
    """status; an evidence item matching every field of `ev` (reference, value, unit, date
    as YYYY-MM-DD, note as a substring); some evidence note containing `note`; `missing`
    codes among result.missing."""
    assert result["status"] == status, result
    evidence = result["evidence"]
    if ev:
        def matches(e: dict[str, Any]) -> bool:
            for k, want in ev.items():
                if k == "date":
                    if _date(e) != want:
                        return False
                elif k == "note":
                    if want not in (e.get("note") or ""):
                        return False
                elif e.get(k) != want:
                    return False
            return True
        assert any(matches(e) for e in evidence), (ev, evidence)
    if note:
        assert any(note in (e.get("note") or "") for e in evidence), (note, evidence)
    if missing:
        assert missing <= missing_codes(result), (missing, result["missing"])
    if no_missing:
        assert result["missing"] == [], result["missing"]


# (variant, define, status, expectations) per case; ids start with the criterion id.
I1 = "I1 Age 5 to 18"
I2 = "I2 SLE by EULAR ACR 2019 and refractory to standard therapy"
I3 = "I3 SLEDAI-2K at least 8"
I4 = "I4 Vital organ function"
I5 = "I5 Suitable for leukapheresis"
I6 = "I6 Negative pregnancy test and contraception"
I7 = "I7 Informed consent"
E1 = "E1 Prior CAR-T therapy"
E2 = "E2 CNS lupus needing intervention within 60 days"
E3 = "E3 Renal replacement therapy within 3 months or significant kidney disease"
E4 = "E4 Cardiac disease or unstable vital signs"
E5 = "E5 Other disease needing long-term glucocorticoid or immunosuppressant"
E6 = "E6 Uncontrolled or active infection needing systemic treatment"
E7 = "E7 Organ or stem cell transplant or GVHD"
E8 = "E8 Active HBV HCV HIV syphilis CMV"
E9 = "E9 Live vaccine within 4 weeks"
E10 = "E10 Positive blood pregnancy test"
E11 = "E11 Malignancy"
E12 = "E12 Other clinical study within 3 months"
E13 = "E13 Investigator judgement"


def _cases(at: datetime) -> list[Any]:
    P = pytest.param
    d = lambda n: _day(at, n)  # noqa: E731
    return [
        # ---- I1 age 5-18 inclusive
        P("fits", I1, "met", dict(ev={"value": "14", "unit": "a", "note": "required 5 to 18 years"}), id="001-I1-met"),
        P("male-18", I1, "met", dict(ev={"value": "18", "unit": "a"}), id="001-I1-met-18-included"),
        P("woman-19-pregnant", I1, "not-met", dict(ev={"value": "19", "unit": "a"}), id="001-I1-not-met"),
        P("no-birthdate-urine-hcg", I1, "unknown", dict(note="birth date not recorded"), id="001-I1-missing"),
        # ---- I2 diagnosis + EULAR/ACR 2019 + refractory
        P("fits", I2, "met", dict(ev={"reference": f"Observation/{PID}-eular", "value": "24", "unit": "{score}",
                                      "date": d(4 * 365 - 14)}, note="2 listed agents: met"), id="001-I2-met"),
        P("bare", I2, "not-met", dict(note="no record found of an active SLE diagnosis"), id="001-I2-not-met-no-sle"),
        P("drug-induced-lupus", I2, "not-met", dict(ev={"reference": f"Condition/{PID}-dil",
                                                        "note": "drug-induced lupus is not SLE"}),
          id="001-I2-not-met-drug-induced"),
        P("low-scores", I2, "not-met", dict(ev={"value": "8", "unit": "{score}", "date": d(4 * 365 - 14),
                                                "note": "EULAR/ACR 2019: not-met"}), id="001-I2-not-met-score"),
        P("missing-score-lvef-cmv", I2, "unknown", dict(missing={"eular-acr-2019"}), id="001-I2-missing-score"),
        P("weak-drugs", I2, "unknown", dict(note="clinician review: intolerant to standard treatments"),
          id="001-I2-unknown-not-refractory-on-record"),
        P("fits", "I2 part glucocorticoid", "met",
          dict(ev={"reference": f"MedicationRequest/{PID}-pred-high", "value": "prednisone", "unit": "mg/d",
                   "date": d(600), "note": "1.05 mg/kg/d (weight 38 kg at the course)"}), id="001-I2-part-gc-met"),
        P("weak-drugs", "I2 part glucocorticoid", "not-met", dict(ev={"note": "0.53 mg/kg/d"}),
          id="001-I2-part-gc-not-met"),
        P("open-course-mpa", "I2 part glucocorticoid", "unknown",
          dict(ev={"reference": f"MedicationRequest/{PID}-pred-high", "note": "end not recorded"}),
          id="001-I2-part-gc-unknown-no-end-date"),
        P("refills-recent-rtx-no-weight", "I2 part glucocorticoid", "unknown", dict(missing={"29463-7"}),
          id="001-I2-part-gc-missing-weight"),
        P("fits", "I2 part hydroxychloroquine", "met", dict(ev={"value": "hydroxychloroquine", "date": d(4 * 365 - 20)}),
          id="001-I2-part-hcq-met"),
        P("weak-drugs", "I2 part hydroxychloroquine", "not-met", dict(note="no record found: hydroxychloroquine"),
          id="001-I2-part-hcq-not-met"),
        P("weak-drugs", "I2 part two listed agents", "not-met", dict(note="found 1 of 2"), id="001-I2-part-agents-not-met"),
        P("open-course-mpa", "I2 part two listed agents", "not-met",
          dict(ev={"reference": f"MedicationStatement/{PID}-mpa", "note": "counted"}, note="found 1 of 2"),
          id="001-I2-part-agents-mmf-and-mpa-one-agent"),
        P("rituximab-cyclophosphamide", "I2 part two listed agents", "met",
          dict(ev={"reference": f"MedicationRequest/{PID}-rtx", "value": "rituximab", "date": d(120),
                   "note": "listed agent, counted"}, note="found 2 of 2"), id="001-I2-part-agents-met-pulses-rituximab"),
        P("refills-recent-rtx-no-weight", "I2 part two listed agents", "not-met",
          dict(ev={"reference": f"MedicationRequest/{PID}-rtx", "note": "started less than 90 days ago"},
               note="found 1 of 2"), id="001-I2-part-agents-refills-merge-recent-rituximab"),
        P("rituximab-cyclophosphamide", I2, "met", dict(note="failed standard therapy: met"), id="001-I2-met-alt-agents"),
        # ---- I3 SLEDAI-2K >= 8
        P("fits", I3, "met", dict(ev={"reference": f"Observation/{PID}-sledai", "value": "12", "unit": "{score}",
                                      "date": d(10)}), id="001-I3-met"),
        P("low-scores", I3, "not-met", dict(ev={"value": "6", "unit": "{score}", "date": d(10)}), id="001-I3-not-met"),
        P("bare", I3, "unknown", dict(note="no result", missing={"sledai-2k"}), id="001-I3-missing"),
        P("stale", I3, "unknown", dict(ev={"value": "11", "date": d(120), "note": "stale"}, missing={"sledai-2k"}),
          id="001-I3-stale"),
        # ---- I4 organ function (each named part deciding)
        P("fits", I4, "met", dict(ev={"reference": f"Observation/{PID}-lvef", "value": "64", "unit": "%", "date": d(40)},
                                  note="LVEF: met"), id="001-I4-met"),
        P("exclusions-1", I4, "not-met", dict(ev={"value": "48", "unit": "%", "date": d(20), "note": "LVEF: not-met"}),
          id="001-I4-not-met-lvef"),
        P("exclusions-2", I4, "not-met", dict(ev={"reference": f"Observation/{PID}-creat", "value": "23.3",
                                                  "unit": "mL/min/{1.73_m2}", "note": "eGFR: not-met; derived: bedside Schwartz"}),
          id="001-I4-not-met-egfr"),
        P("exclusions-3", I4, "not-met", dict(ev={"value": "150", "unit": "U/L", "date": d(10),
                                                  "note": "ALT: not-met; 4.29 x ULN (35 U/L)"}), id="001-I4-not-met-alt"),
        P("exclusions-6", I4, "not-met", dict(ev={"value": "130", "unit": "U/L", "note": "AST: not-met; 3.25 x ULN"}),
          id="001-I4-not-met-ast"),
        P("exclusions-4", I4, "not-met", dict(ev={"value": "50", "unit": "umol/L", "note": "bilirubin: not-met; 2.38 x ULN"}),
          id="001-I4-not-met-bilirubin"),
        P("exclusions-5", I4, "not-met", dict(ev={"value": "90", "unit": "%", "note": "SpO2: not-met"}),
          id="001-I4-not-met-spo2"),
        P("missing-score-lvef-cmv", I4, "unknown", dict(note="LVEF: unknown; no result", missing={"10230-1"}),
          id="001-I4-missing-lvef"),
        P("refills-recent-rtx-no-weight", "I4 part eGFR", "unknown", dict(missing={"8302-2", "2160-0"}),
          id="001-I4-part-egfr-missing-height"),
        P("stale", I4, "unknown", dict(ev={"value": "63", "date": d(400), "note": "LVEF: unknown; stale"},
                                       missing={"10230-1", "1742-6"}), id="001-I4-stale"),
        # ---- I5 review
        P("fits", I5, "unknown", dict(note="clinician review", no_missing=True), id="001-I5-review"),
        P("bare", I5, "unknown", dict(note="clinician review"), id="001-I5-review-no-data"),
        # ---- I6 negative pregnancy test (+ contraception review note)
        P("fits", I6, "met", dict(ev={"reference": f"Observation/{PID}-hcg", "value": "Negative", "date": d(7)},
                                  note="pregnancy test: met"), id="001-I6-met"),
        P("male-18", I6, "met", dict(note="not applicable: male"), id="001-I6-met-male"),
        P("girl-8", I6, "met", dict(note="not applicable: female aged 8"), id="001-I6-met-girl-under-10"),
        P("woman-19-pregnant", I6, "not-met", dict(ev={"value": "Positive", "date": d(5)}), id="001-I6-not-met"),
        P("no-birthdate-urine-hcg", I6, "not-met", dict(ev={"reference": f"Observation/{PID}-hcg-urine",
                                                            "value": "Positive"}), id="001-I6-not-met-urine"),
        P("bare", I6, "unknown", dict(missing={"2118-8"}), id="001-I6-missing"),
        P("stale", I6, "unknown", dict(ev={"date": d(120), "note": "stale"}, missing={"2118-8"}), id="001-I6-stale"),
        # ---- I7 review
        P("fits", I7, "unknown", dict(note="clinician review", no_missing=True), id="001-I7-review"),
        P("bare", I7, "unknown", dict(note="clinician review"), id="001-I7-review-no-data"),
        # ---- E1 prior CAR-T
        P("exclusions-1", E1, "met", dict(ev={"reference": f"Procedure/{PID}-cart", "date": d(700),
                                              "note": "procedure: met"}), id="001-E1-met-procedure"),
        P("exclusions-2", E1, "met", dict(ev={"reference": f"MedicationRequest/{PID}-tisa", "date": d(800),
                                              "note": "product: met"}), id="001-E1-met-product"),
        P("fits", E1, "not-met", dict(note="no record found"), id="001-E1-not-met"),
        P("bare", E1, "not-met", dict(note="no record found: CAR-T therapy"), id="001-E1-missing"),
        # ---- E2 CNS lupus within 60 days
        P("exclusions-1", E2, "met", dict(ev={"reference": f"Condition/{PID}-nplupus", "date": d(30)}), id="001-E2-met"),
        P("exclusions-2", E2, "unknown", dict(ev={"date": d(365), "note": "clinician review"}, no_missing=True),
          id="001-E2-unknown-older-active"),
        P("exclusions-3", E2, "not-met", dict(note="no record found"), id="001-E2-not-met-resolved"),
        P("bare", E2, "not-met", dict(note="no record found"), id="001-E2-missing"),
        # ---- E3 RRT within 3 months / kidney disease (investigator)
        P("exclusions-1", E3, "met", dict(ev={"reference": f"Procedure/{PID}-hd", "date": d(30), "note": "RRT: met"}),
          id="001-E3-met"),
        P("exclusions-2", E3, "unknown", dict(ev={"reference": f"Condition/{PID}-ln", "note": "investigator to judge"}),
          id="001-E3-unknown-lupus-nephritis"),
        P("exclusions-3", E3, "not-met", dict(note="no record found: renal replacement therapy within 3 months"),
          id="001-E3-not-met-old-dialysis"),
        P("bare", E3, "not-met", dict(note="no record found: active lupus nephritis"), id="001-E3-missing"),
        # ---- E4 cardiac
        P("exclusions-1", E4, "met", dict(ev={"reference": f"Condition/{PID}-chd", "note": "congenital heart disease: met"}),
          id="001-E4-met-chd-history"),
        P("exclusions-2", E4, "met", dict(ev={"reference": f"Condition/{PID}-ami", "date": d(60)}), id="001-E4-met-recent-mi"),
        P("exclusions-3", E4, "met", dict(ev={"reference": f"Condition/{PID}-vt", "note": "severe arrhythmia: met"}),
          id="001-E4-met-vt"),
        P("exclusions-4", E4, "unknown", dict(ev={"reference": f"Condition/{PID}-effusion", "note": "size not coded"}),
          id="001-E4-unknown-effusion"),
        P("exclusions-5", E4, "unknown", dict(ev={"reference": f"Condition/{PID}-myocarditis"}), id="001-E4-unknown-myocarditis"),
        P("exclusions-6", E4, "not-met", dict(note="no record found: acute myocardial infarction within 6 months"),
          id="001-E4-not-met-old-mi"),
        P("fits", E4, "not-met", dict(note="no record found: congenital heart disease"), id="001-E4-not-met"),
        P("bare", E4, "not-met", dict(note="no record found: congenital heart disease"), id="001-E4-missing"),
        # ---- E5 review
        P("fits", E5, "unknown", dict(note="clinician review", no_missing=True), id="001-E5-review"),
        P("exclusions-1", E5, "unknown", dict(note="clinician review"), id="001-E5-review-other-data"),
        # ---- E6 infection
        P("exclusions-1", E6, "met", dict(ev={"reference": f"Condition/{PID}-sepsis", "date": d(3)}), id="001-E6-met"),
        P("exclusions-4", E6, "met", dict(ev={"reference": f"Condition/{PID}-sepsis", "date": d(5)}),
          id="001-E6-met-resolved-within-week"),
        P("exclusions-2", E6, "unknown", dict(ev={"reference": f"Condition/{PID}-infection", "note": "infection, current or within 1 week"},
                                                note="clinician review: does it need systemic treatment"),
          id="001-E6-unknown-bacterial"),
        P("exclusions-3", E6, "not-met", dict(note="no record found: infection or systemic anti-infective within 1 week"),
          id="001-E6-not-met-resolved"),
        P("bare", E6, "not-met", dict(note="no record found"), id="001-E6-missing"),
        # ---- E7 transplant / GVHD
        P("exclusions-1", E7, "met", dict(ev={"reference": f"Procedure/{PID}-hsct", "date": d(1500)}), id="001-E7-met-hsct"),
        P("exclusions-2", E7, "met", dict(ev={"reference": f"Condition/{PID}-ktx"}), id="001-E7-met-kidney-transplant"),
        P("exclusions-3", E7, "unknown", dict(ev={"reference": f"Condition/{PID}-gvhd", "note": "grade not coded"}),
          id="001-E7-unknown-gvhd"),
        P("fits", E7, "not-met", dict(note="no record found"), id="001-E7-not-met"),
        P("bare", E7, "not-met", dict(note="no record found: organ or haematopoietic stem cell transplant"),
          id="001-E7-missing"),
        # ---- E8 infections (each named part deciding)
        P("fits", E8, "not-met", dict(ev={"reference": f"Observation/{PID}-cmv", "value": "<34.5", "unit": "[IU]/mL",
                                          "date": d(30), "note": "CMV: not-met"}), id="001-E8-not-met"),
        P("exclusions-1", E8, "met", dict(ev={"reference": f"Observation/{PID}-hbvdna", "value": "230000",
                                              "unit": "[IU]/mL", "date": d(30), "note": "HBV: met"}), id="001-E8-met-hbv"),
        P("exclusions-4", "E8 part HBV", "not-met", dict(ev={"value": "<20", "note": "not above the reference range"}),
          id="001-E8-part-hbv-dna-below-limit"),
        P("exclusions-5", "E8 part HBV", "unknown", dict(missing={"42595-9"}), id="001-E8-part-hbv-missing-dna"),
        P("exclusions-2", "E8 part HCV", "met", dict(ev={"value": "1200000", "unit": "[IU]/mL", "note": "HCV RNA: met"}),
          id="001-E8-part-hcv-met"),
        P("exclusions-6", "E8 part HCV", "not-met", dict(ev={"value": "Not detected"}), id="001-E8-part-hcv-rna-not-detected"),
        P("exclusions-3", E8, "met", dict(ev={"reference": f"Observation/{PID}-hiv", "value": "Positive",
                                              "note": "HIV: met"}), id="001-E8-met-hiv-test"),
        P("exclusions-2", "E8 part HIV", "met", dict(ev={"reference": f"Condition/{PID}-hivdx"}), id="001-E8-part-hiv-diagnosis"),
        P("exclusions-4", E8, "met", dict(ev={"reference": f"Observation/{PID}-tp", "note": "syphilis: met"}),
          id="001-E8-met-syphilis"),
        P("exclusions-5", E8, "unknown", dict(ev={"reference": f"Observation/{PID}-rpr", "value": "Positive"},
                                                  note="needs treponemal confirmation", missing={"24110-9", "42595-9"}),
          id="001-E8-unknown-rpr-only"),
        P("exclusions-6", "E8 part syphilis", "not-met", dict(ev={"reference": f"Observation/{PID}-tp", "value": "Negative"}),
          id="001-E8-part-syphilis-rpr-false-positive"),
        P("exclusions-6", E8, "met", dict(ev={"value": "1500", "unit": "[IU]/mL", "date": d(20), "note": "CMV: met; detected"}),
          id="001-E8-met-cmv"),
        P("missing-score-lvef-cmv", E8, "unknown", dict(note="CMV: unknown; no result", missing={"72493-0"}),
          id="001-E8-missing-cmv"),
        P("bare", E8, "unknown", dict(missing={"5196-1", "13955-0", "56888-1", "24110-9", "72493-0"}), id="001-E8-missing"),
        P("stale", E8, "unknown", dict(ev={"reference": f"Observation/{PID}-hbsag", "date": d(400), "note": "stale"}),
          id="001-E8-stale"),
        # ---- E9 live vaccine within 4 weeks
        P("exclusions-1", E9, "met", dict(ev={"reference": f"Immunization/{PID}-mmr", "value": "MMR", "date": d(14)}),
          id="001-E9-met"),
        P("exclusions-3", E9, "not-met", dict(note="no record found: live vaccine within 4 weeks"), id="001-E9-not-met-6-weeks"),
        P("exclusions-2", E9, "unknown", dict(ev={"reference": f"Immunization/{PID}-zoster", "date": d(10)},
                                                note="clinician review (was it live?)"),
          id="001-E9-unknown-unspecified-formulation"),
        P("bare", E9, "not-met", dict(note="no record found"), id="001-E9-missing"),
        # ---- E10 positive blood pregnancy test
        P("woman-19-pregnant", E10, "met", dict(ev={"reference": f"Observation/{PID}-hcg", "value": "Positive",
                                                    "date": d(5)}), id="001-E10-met"),
        P("exclusions-3", E10, "met", dict(ev={"value": "1250", "unit": "m[IU]/mL", "date": d(5)}),
          id="001-E10-met-quantitative"),
        P("fits", E10, "not-met", dict(ev={"value": "Negative", "date": d(7), "note": "negative"}), id="001-E10-not-met"),
        P("male-18", E10, "not-met", dict(note="not applicable: male"), id="001-E10-not-met-male"),
        P("girl-8", E10, "not-met", dict(note="not applicable: female aged 8"), id="001-E10-not-met-girl-under-10"),
        P("bare", E10, "unknown", dict(missing={"2118-8"}), id="001-E10-missing"),
        P("no-birthdate-urine-hcg", E10, "unknown", dict(missing={"2118-8"}), id="001-E10-missing-urine-only"),
        P("stale", E10, "unknown", dict(ev={"date": d(120), "note": "stale"}, missing={"2118-8"}), id="001-E10-stale"),
        # ---- E11 malignancy
        P("exclusions-1", E11, "met", dict(ev={"reference": f"Condition/{PID}-all", "date": d(2000)}), id="001-E11-met-icd"),
        P("exclusions-2", E11, "met", dict(ev={"reference": f"Condition/{PID}-cancer"}), id="001-E11-met-previous-snomed"),
        P("fits", E11, "not-met", dict(note="no record found: malignancy"), id="001-E11-not-met"),
        P("bare", E11, "not-met", dict(note="no record found"), id="001-E11-missing"),
        # ---- E12, E13 review
        P("fits", E12, "unknown", dict(note="clinician review", no_missing=True), id="001-E12-review"),
        P("bare", E12, "unknown", dict(note="clinician review"), id="001-E12-review-no-data"),
        P("fits", E13, "unknown", dict(note="clinician review", no_missing=True), id="001-E13-review"),
        P("exclusions-1", E13, "unknown", dict(note="clinician review"), id="001-E13-review-other-data"),
    ]


# The cases are built at collection time against the fixed evaluation moment.
CASES = _cases(EVAL_AT)


@pytest.mark.parametrize(("variant", "define", "status", "expect"), CASES)
def test_criterion(rules_engine: Any, eval_at: datetime, variant: str, define: str, status: str,
                   expect: dict[str, Any]) -> None:
    result = _results(rules_engine, eval_at, variant)[define]
    _check(result, status, **expect)


def test_every_criterion_has_met_not_met_and_missing_cases() -> None:
    trial = load_trial(Path(__file__).resolve().parents[2] / "rules" / f"{TRIAL}.json")
    ids = [p.id for p in CASES]
    for c in trial.criteria:
        mine = [i for i in ids if i.startswith(c.id + "-")]
        if c.review:
            assert any("-review" in i for i in mine), c.id
        else:
            assert any(i.startswith(f"{c.id}-met") for i in mine), c.id
            assert any(i.startswith(f"{c.id}-not-met") for i in mine), c.id
            assert any(i.startswith((f"{c.id}-missing", f"{c.id}-stale", f"{c.id}-unknown")) for i in mine), c.id


def test_fits_the_trial(rules_engine: Any, eval_at: datetime) -> None:
    """The fitting child: every data-decidable inclusion met, every data-decidable exclusion
    not met, every review item unknown with a clinician-review note."""
    trial = load_trial(Path(__file__).resolve().parents[2] / "rules" / f"{TRIAL}.json")
    results = _results(rules_engine, eval_at, "fits")
    assert len(trial.criteria) == 20
    for c in trial.criteria:
        r = results[c.define]
        if c.review:
            assert r["status"] == "unknown" and any("clinician review" in (e["note"] or "") for e in r["evidence"]), c.id
        elif c.type == "inclusion":
            assert r["status"] == "met", (c.id, r)
        else:
            assert r["status"] == "not-met", (c.id, r)
