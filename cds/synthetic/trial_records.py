"""The patients who fit each trial: one clinically coherent record per trial.

Each `fits_00N(pid, at)` builds a patient who meets every data-decidable inclusion and no
exclusion of trial seed 00N, with dates relative to the evaluation time `at` (some dates of
long-past history are absolute, as they would be in a chart). They were written beside each
trial's per-criterion tests (tests/trials/test_00N_criteria.py), which still start every case
from them; the synthetic patient generator (`cds.synthetic.patients`) reuses them, so they live
in the package. The helpers are the ones those builders need, shared where they were the same.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from . import fhir as F

Resource = dict[str, Any]

POS = ("SNOMEDCT", "10828004")
NEG = ("SNOMEDCT", "260385009")
DETECTED = ("SNOMEDCT", "260373001")
NOT_DETECTED = ("SNOMEDCT", "260415000")


def ago(at: datetime, days: float) -> datetime:
    return at - timedelta(days=days)


def born(at: datetime, years: float) -> date:
    return (at - timedelta(days=round(365.25 * years))).date()


def negative_result(pid: str, loinc: str, when: datetime, rid: str) -> Resource:
    """A negative qualitative result (serology, pregnancy test): SNOMED value plus interpretation."""
    return F.observation(pid, "LOINC", loinc, when, value_code=("SNOMEDCT", "260385009"), interpretation="NEG", rid=rid)

# --------------------------------------------------------------------------------------------
# 000 tongji-cd19-bcma-cart-sle (adults 18-70)
# --------------------------------------------------------------------------------------------

def bilag_panel(pid: str, when: datetime, grades: dict[str, str], rid: str) -> Resource:
    """A BILAG-2004 assessment: one component per graded domain (codes.md)."""
    return F.observation(pid, "Local", "bilag-2004", when, category="survey", rid=rid, components=[
        {"code": F.concept("Local", f"bilag-2004-{domain}"), "valueCodeableConcept": F.concept("BILAG", grade)}
        for domain, grade in grades.items()
    ])


FIT_BILAG_000 = {"constitutional": "C", "mucocutaneous": "A", "neuropsychiatric": "E", "musculoskeletal": "B",
             "cardiorespiratory": "E", "gastrointestinal": "E", "ophthalmic": "E", "renal": "E",
             "haematological": "C"}


def fits_000(pid: str, at: datetime) -> list[Resource]:
    """A 34-year-old woman with SLE since March 2019 (EULAR/ACR 2019 score 22: ANA 1:640,
    arthritis, acute cutaneous lupus, low C3/C4, anti-dsDNA), still active at screening despite
    hydroxychloroquine, prednisone 15 mg/d and mycophenolate mofetil (belimumab stopped for
    lack of effect): SELENA-SLEDAI 12 (rash 2, arthritis 4, alopecia 2, low complement 2,
    anti-dsDNA 2), PGA 2, BILAG-2004 mucocutaneous A and musculoskeletal B. Organ function
    preserved, viral screen negative, serum hCG negative."""
    screen = at - timedelta(days=14)
    labs = at - timedelta(days=10)
    virology = at - timedelta(days=20)
    def r(name: str) -> str:  # stable, readable ids per patient
        return f"{pid}-{name}"

    return [
        F.patient(pid, date(at.year - 34, 5, 14), "female", name="Fits000"),
        F.condition(pid, "SNOMEDCT", "55464009", date(2019, 3, 1), rid=r("sle")),
        F.observation(pid, "LOINC", "5048-4", date(2019, 3, 1), value_string="1:640", rid=r("ana")),
        F.observation(pid, "Local", "eular-acr-2019", date(2019, 3, 15), value=22, unit="{score}",
                      category="survey", rid=r("eular")),
        # disease activity at screening
        F.observation(pid, "Local", "selena-sledai", screen, value=12, unit="{score}", category="survey",
                      rid=r("selena")),
        F.observation(pid, "Local", "pga", screen, value=2, unit="{score}", category="survey", rid=r("pga")),
        bilag_panel(pid, screen, FIT_BILAG_000, rid=r("bilag")),
        F.observation(pid, "LOINC", "5130-0", labs, value=186, unit="[IU]/mL", ref_high=30, interpretation="H",
                      rid=r("dsdna")),
        F.observation(pid, "LOINC", "4485-9", labs, value=58, unit="mg/dL", ref_high=180, interpretation="L",
                      rid=r("c3")),
        F.observation(pid, "LOINC", "4498-2", labs, value=6, unit="mg/dL", ref_high=40, interpretation="L",
                      rid=r("c4")),
        # organ function and blood counts
        F.observation(pid, "LOINC", "2160-0", labs, value=0.78, unit="mg/dL", ref_high=1.02, rid=r("creat")),
        F.observation(pid, "LOINC", "98979-8", labs, value=101, unit="mL/min/{1.73_m2}", rid=r("egfr")),
        F.observation(pid, "LOINC", "1742-6", labs, value=22, unit="U/L", ref_high=40, rid=r("alt")),
        F.observation(pid, "LOINC", "1920-8", labs, value=27, unit="U/L", ref_high=40, rid=r("ast")),
        F.observation(pid, "LOINC", "1975-2", labs, value=0.6, unit="mg/dL", ref_high=1.2, rid=r("tbil")),
        F.observation(pid, "LOINC", "718-7", labs, value=112, unit="g/L", ref_high=150, rid=r("hb")),
        F.observation(pid, "LOINC", "6690-2", labs, value=3.4, unit="10*9/L", ref_high=9.5, rid=r("wbc")),
        F.observation(pid, "LOINC", "751-8", labs, value=2.1, unit="10*9/L", ref_high=6.3, rid=r("neut")),
        F.observation(pid, "LOINC", "731-0", labs, value=0.8, unit="10*9/L", ref_high=3.2, rid=r("lymph")),
        F.observation(pid, "LOINC", "777-3", labs, value=168, unit="10*9/L", ref_high=350, rid=r("plt")),
        F.observation(pid, "LOINC", "29463-7", labs, value=58, unit="kg", category="vital-signs", rid=r("weight")),
        F.observation(pid, "LOINC", "8302-2", labs, value=162, unit="cm", category="vital-signs", rid=r("height")),
        # infection screen and pregnancy test
        negative_result(pid, "5196-1", virology, r("hbsag")),
        negative_result(pid, "16933-4", virology, r("hbcab")),
        negative_result(pid, "13955-0", virology, r("hcvab")),
        negative_result(pid, "56888-1", virology, r("hiv")),
        negative_result(pid, "24110-9", virology, r("tp")),
        negative_result(pid, "2118-8", at - timedelta(days=5), r("hcg")),
        # treatment history: standard therapy for years, still active
        F.medication_statement(pid, "5521", date(2019, 3, 20), None, dose_mg=200, per_day=2, status="active",
                               rid=r("hcq")),
        F.medication_request(pid, "8640", at - timedelta(days=200), None, dose_mg=15, rid=r("pred")),
        F.medication_request(pid, "68149", at - timedelta(days=300), None, dose_mg=1000, per_day=2, rid=r("mmf")),
        F.medication_statement(pid, "1092437", at - timedelta(days=760), at - timedelta(days=420), rid=r("belim")),
    ]


# --------------------------------------------------------------------------------------------
# 001 zju-children-cd19-cart-sle (children 5-18)
# --------------------------------------------------------------------------------------------

def fits_001(pid: str, at: datetime) -> list[Resource]:
    """A 14-year-old girl with refractory childhood-onset SLE who fits this trial.

    SLE since age 10 (EULAR/ACR 2019 score 24 at diagnosis: ANA 1:640, arthritis, malar
    rash, low C3/C4, anti-dsDNA), active now (SLEDAI-2K 12) despite prednisone 1 mg/kg/d for
    15 weeks, hydroxychloroquine since diagnosis, mycophenolate mofetil for 23 months and
    belimumab for 6 months. Normal organ function (derived bedside Schwartz eGFR ~125),
    negative screening serology, negative serum hCG, no exclusion on record.
    """
    sle_onset = ago(at, 4 * 365)
    course = ago(at, 600)  # high-dose prednisone course start
    r = [
        F.patient(pid, born(at, 14.5), "female", name="Fits001"),
        F.condition(pid, "SNOMEDCT", "55464009", sle_onset, rid=f"{pid}-sle"),
        F.observation(pid, "Local", "eular-acr-2019", sle_onset + timedelta(days=14), value=24, unit="{score}",
                      category="survey", rid=f"{pid}-eular"),
        F.observation(pid, "Local", "sledai-2k", ago(at, 10), value=12, unit="{score}", category="survey",
                      rid=f"{pid}-sledai"),
        # anthropometrics: weight when the high-dose course started, and now
        F.observation(pid, "LOINC", "29463-7", course - timedelta(days=3), value=38, unit="kg", category="vital-signs",
                      rid=f"{pid}-weight-course"),
        F.observation(pid, "LOINC", "29463-7", ago(at, 10), value=47, unit="kg", category="vital-signs",
                      rid=f"{pid}-weight"),
        F.observation(pid, "LOINC", "8302-2", ago(at, 10), value=158, unit="cm", category="vital-signs",
                      rid=f"{pid}-height"),
        # organ function
        F.observation(pid, "LOINC", "10230-1", ago(at, 40), value=64, unit="%", category="imaging", rid=f"{pid}-lvef"),
        F.observation(pid, "LOINC", "2160-0", ago(at, 10), value=0.52, unit="mg/dL", ref_high=0.9, rid=f"{pid}-creat"),
        F.observation(pid, "LOINC", "1920-8", ago(at, 10), value=28, unit="U/L", ref_high=40, rid=f"{pid}-ast"),
        F.observation(pid, "LOINC", "1742-6", ago(at, 10), value=19, unit="U/L", ref_high=35, rid=f"{pid}-alt"),
        F.observation(pid, "LOINC", "14631-6", ago(at, 10), value=9.1, unit="umol/L", ref_high=21, rid=f"{pid}-tbil"),
        F.observation(pid, "LOINC", "59408-5", ago(at, 10), value=98, unit="%", category="vital-signs", rid=f"{pid}-spo2"),
        # pregnancy test (post-menarchal girl)
        F.observation(pid, "LOINC", "2118-8", ago(at, 7), value_code=("SNOMEDCT", "260385009"), interpretation="NEG",
                      rid=f"{pid}-hcg"),
        # screening serology and PCR
        negative_result(pid, "5196-1", ago(at, 30), f"{pid}-hbsag"),
        negative_result(pid, "16933-4", ago(at, 30), f"{pid}-hbcab"),
        negative_result(pid, "13955-0", ago(at, 30), f"{pid}-hcvab"),
        negative_result(pid, "56888-1", ago(at, 30), f"{pid}-hiv"),
        negative_result(pid, "24110-9", ago(at, 30), f"{pid}-tp"),
        F.observation(pid, "LOINC", "72493-0", ago(at, 30), value=34.5, comparator="<", unit="[IU]/mL", ref_high=34.5,
                      interpretation="ND", rid=f"{pid}-cmv"),
        # treatment history
        F.medication_request(pid, "8640", course, course + timedelta(days=105), dose_mg=40, status="completed",
                             rid=f"{pid}-pred-high"),
        F.medication_request(pid, "8640", ago(at, 120), None, dose_mg=10, status="active", rid=f"{pid}-pred-low"),
        F.medication_request(pid, "5521", sle_onset + timedelta(days=20), None, dose_mg=200, status="active",
                             rid=f"{pid}-hcq"),
        F.medication_request(pid, "68149", ago(at, 900), ago(at, 200), dose_mg=750, per_day=2, status="completed",
                             rid=f"{pid}-mmf"),
        F.medication_request(pid, "1092437", ago(at, 180), None, status="active", rid=f"{pid}-belimumab"),
    ]
    return r


# --------------------------------------------------------------------------------------------
# 002 nct07318259 (adults 18 and older)
# --------------------------------------------------------------------------------------------

def fits_002(pid: str, at: datetime) -> list[Resource]:
    """A 31-year-old woman with SLE since 2017 (EULAR/ACR 2019 score 24: ANA 1:1280, class IV
    lupus nephritis in 2019, arthritis, acute cutaneous lupus, low C3/C4, anti-dsDNA), refractory
    to a 4-month course of prednisone 60 mg/d (about 1 mg/kg) with hydroxychloroquine, then
    mycophenolate mofetil, belimumab and tacrolimus; still active at screening on prednisone
    15 mg/d, hydroxychloroquine and tacrolimus (SLEDAI-2K 16: arthritis 4, proteinuria 4, rash 2,
    alopecia 2, low complement 2, raised anti-dsDNA 2). Organ function preserved (eGFR 96, normal
    liver tests, SpO2 98 % on room air), viral and syphilis screen negative, negative serum hCG
    five days before evaluation."""
    screen = at - timedelta(days=12)
    labs = at - timedelta(days=10)
    virology = at - timedelta(days=21)
    def r(name: str) -> str:  # stable, readable ids per patient
        return f"{pid}-{name}"

    return [
        F.patient(pid, date(at.year - 31, 2, 9), "female", name="Fits002"),
        F.condition(pid, "SNOMEDCT", "55464009", date(2017, 6, 1), rid=r("sle")),
        F.observation(pid, "Local", "eular-acr-2019", date(2019, 9, 20), value=24, unit="{score}",
                      category="survey", rid=r("eular")),
        F.observation(pid, "Local", "sledai-2k", screen, value=16, unit="{score}", category="survey", rid=r("sledai")),
        F.observation(pid, "LOINC", "5130-0", labs, value=212, unit="[IU]/mL", ref_high=30, interpretation="H",
                      rid=r("dsdna")),
        F.observation(pid, "LOINC", "4485-9", labs, value=61, unit="mg/dL", ref_high=180, interpretation="L", rid=r("c3")),
        F.observation(pid, "LOINC", "4498-2", labs, value=7, unit="mg/dL", ref_high=40, interpretation="L", rid=r("c4")),
        # vital signs and anthropometrics
        F.observation(pid, "LOINC", "29463-7", labs, value=58, unit="kg", category="vital-signs", rid=r("weight")),
        F.observation(pid, "LOINC", "8302-2", labs, value=161, unit="cm", category="vital-signs", rid=r("height")),
        F.observation(pid, "LOINC", "59410-1", labs, value=98, unit="%", category="vital-signs", rid=r("spo2")),
        # organ function
        F.observation(pid, "LOINC", "2160-0", labs, value=0.82, unit="mg/dL", ref_high=1.02, rid=r("creat")),
        F.observation(pid, "LOINC", "98979-8", labs, value=96, unit="mL/min/{1.73_m2}", rid=r("egfr")),
        F.observation(pid, "LOINC", "1920-8", labs, value=26, unit="U/L", ref_high=40, rid=r("ast")),
        F.observation(pid, "LOINC", "1742-6", labs, value=21, unit="U/L", ref_high=40, rid=r("alt")),
        F.observation(pid, "LOINC", "1975-2", labs, value=0.6, unit="mg/dL", ref_high=1.2, rid=r("tbil")),
        # infection screen and pregnancy test
        negative_result(pid, "5196-1", virology, r("hbsag")),
        negative_result(pid, "16933-4", virology, r("hbcab")),
        negative_result(pid, "13955-0", virology, r("hcvab")),
        negative_result(pid, "56888-1", virology, r("hiv")),
        negative_result(pid, "24110-9", virology, r("tp")),
        negative_result(pid, "2118-8", at - timedelta(days=5), r("hcg")),
        # treatment history
        F.medication_statement(pid, "5521", date(2017, 6, 10), None, dose_mg=200, per_day=2, status="active", rid=r("hcq")),
        F.medication_statement(pid, "8640", date(2019, 9, 25), date(2020, 1, 25), dose_mg=60, rid=r("pred-high")),
        F.medication_request(pid, "8640", at - timedelta(days=180), None, dose_mg=15, rid=r("pred")),
        F.medication_statement(pid, "68149", date(2019, 9, 25), date(2022, 3, 1), dose_mg=1000, per_day=2, rid=r("mmf")),
        F.medication_request(pid, "42316", at - timedelta(days=400), None, dose_mg=2, per_day=2, rid=r("tac")),
        F.medication_statement(pid, "1092437", date(2022, 3, 15), date(2023, 9, 15), rid=r("belim")),
    ]


# --------------------------------------------------------------------------------------------
# 003 nct06710717 (adults 18-65)
# --------------------------------------------------------------------------------------------

def quantity_component(code: str, value: float, unit: str) -> dict[str, Any]:
    return {"code": F.concept("LOINC", code), "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}


def bilag_component(domain: str, grade: str) -> dict[str, Any]:
    return {"code": F.concept("Local", f"bilag-2004-{domain}", f"BILAG-2004 {domain}"),
            "valueCodeableConcept": F.concept("BILAG", grade, f"Grade {grade}")}


def bilag_assessment(pid: str, when: datetime, grades: dict[str, str], *, rid: str | None = None) -> Resource:
    """A BILAG-2004 assessment: one component per domain given in `grades`."""
    return F.observation(pid, "Local", "bilag-2004", when, category="survey", rid=rid,
                         components=[bilag_component(d, g) for d, g in grades.items()])


def blood_pressure(pid: str, when: datetime, systolic: float, diastolic: float, *, rid: str | None = None) -> Resource:
    return F.observation(pid, "LOINC", "85354-9", when, category="vital-signs", rid=rid,
                         components=[quantity_component("8480-6", systolic, "mm[Hg]"), quantity_component("8462-4", diastolic, "mm[Hg]")])


def score(pid: str, code: str, when: datetime, value: float, *, rid: str | None = None) -> Resource:
    return F.observation(pid, "Local", code, when, value=value, unit="{score}", category="survey", rid=rid)


def flag(pid: str, code: str, when: datetime, value: bool, *, rid: str | None = None) -> Resource:
    return F.observation(pid, "Local", code, when, value_boolean=value, category="survey", rid=rid)


def negative(pid: str, code: str, when: datetime, *, rid: str | None = None) -> Resource:
    return F.observation(pid, "LOINC", code, when, value_code=NEG, interpretation="NEG", rid=rid)


def positive(pid: str, code: str, when: datetime, *, rid: str | None = None) -> Resource:
    return F.observation(pid, "LOINC", code, when, value_code=POS, interpretation="POS", rid=rid)


def ecog(pid: str, when: datetime, answer: str, display: str, *, rid: str | None = None) -> Resource:
    res = F.observation(pid, "LOINC", "89247-1", when, value_code=("LOINC", answer), category="survey", rid=rid)
    res["valueCodeableConcept"]["coding"][0]["display"] = display
    return res


def fits_003(pid: str, at: datetime) -> list[Resource]:
    """A 35-year-old woman with long-standing, active, treatment-refractory SLE (class IV lupus
    nephritis and cutaneous disease) who fits NCT06710717: classified by EULAR/ACR 2019,
    ANA/anti-dsDNA/anti-Sm positive, SLEDAI-2K 14 and BILAG renal A, not in LLDAS or DORIS
    remission, prednisolone throughout plus mycophenolate, tacrolimus and belimumab for over
    3 months each and a rituximab course, preserved organ function, negative viral screen,
    negative serum hCG this week."""
    def d(days: float) -> datetime:
        return ago(at, days)

    onset = datetime(2016, 5, 10, 9, 0)
    return [
        F.patient(pid, date(1991, 3, 14), "female", name="Rahman"),
        # Diagnosis and classification (2016), autoantibodies at diagnosis and recently.
        F.condition(pid, "SNOMEDCT", "55464009", onset, rid=f"{pid}-sle"),
        F.condition(pid, "SNOMEDCT", "68815009", datetime(2019, 2, 1), rid=f"{pid}-ln",
                    text="Lupus nephritis, ISN/RPS class IV"),
        score(pid, "eular-acr-2019", datetime(2016, 6, 1), 24, rid=f"{pid}-eular"),
        F.observation(pid, "LOINC", "5048-4", datetime(2016, 5, 20), value_string="1:640", interpretation="POS", rid=f"{pid}-ana"),
        F.observation(pid, "LOINC", "5130-0", d(37), value=186, unit="[IU]/mL", ref_high=30, interpretation="H", rid=f"{pid}-dsdna"),
        F.observation(pid, "LOINC", "5356-1", datetime(2016, 5, 20), value_code=POS, interpretation="POS", rid=f"{pid}-sm"),
        F.observation(pid, "LOINC", "4485-9", d(14), value=58, unit="mg/dL", ref_high=180, interpretation="L", rid=f"{pid}-c3"),
        F.observation(pid, "LOINC", "4498-2", d(14), value=6, unit="mg/dL", ref_high=40, interpretation="L", rid=f"{pid}-c4"),
        # Disease activity two weeks ago.
        score(pid, "sledai-2k", d(14), 14, rid=f"{pid}-sledai"),
        flag(pid, "lldas", d(14), False, rid=f"{pid}-lldas"),
        flag(pid, "doris-remission", d(14), False, rid=f"{pid}-doris"),
        bilag_assessment(pid, d(14), {"constitutional": "D", "mucocutaneous": "B", "neuropsychiatric": "E", "musculoskeletal": "C",
                           "cardiorespiratory": "E", "gastrointestinal": "E", "ophthalmic": "E", "renal": "A",
                           "haematological": "C"}, rid=f"{pid}-bilag"),
        ecog(pid, d(14), "LA9623-5", "Restricted in physically strenuous activity but ambulatory", rid=f"{pid}-ecog"),
        # Treatment history: prednisolone throughout; MMF, tacrolimus, belimumab >= 3 months each; rituximab.
        F.medication_request(pid, "8638", datetime(2016, 5, 12), None, dose_mg=10, status="active", rid=f"{pid}-pred"),
        F.medication_request(pid, "5521", datetime(2016, 5, 12), None, dose_mg=200, per_day=2, status="active", rid=f"{pid}-hcq"),
        F.medication_statement(pid, "68149", datetime(2019, 2, 15), datetime(2021, 8, 31), dose_mg=1500, per_day=2, rid=f"{pid}-mmf"),
        F.medication_statement(pid, "42316", datetime(2021, 9, 1), datetime(2023, 3, 31), dose_mg=3, per_day=2, rid=f"{pid}-tac"),
        F.medication_statement(pid, "1092437", datetime(2023, 4, 15), datetime(2024, 10, 15), rid=f"{pid}-bel"),
        F.medication_statement(pid, "121191", datetime(2025, 6, 2), datetime(2025, 6, 16), dose_mg=1000, rid=f"{pid}-rtx"),
        F.medication_request(pid, "7145", datetime(2025, 1, 6), None, dose_mg=720, per_day=2, status="active", rid=f"{pid}-mpa"),
        # Organ function.
        F.observation(pid, "LOINC", "1742-6", d(14), value=31, unit="U/L", ref_high=35, rid=f"{pid}-alt"),
        F.observation(pid, "LOINC", "1920-8", d(14), value=27, unit="U/L", ref_high=35, rid=f"{pid}-ast"),
        F.observation(pid, "LOINC", "1975-2", d(14), value=0.5, unit="mg/dL", ref_high=1.2, rid=f"{pid}-bili"),
        F.observation(pid, "LOINC", "2160-0", d(14), value=0.9, unit="mg/dL", ref_high=1.0, rid=f"{pid}-creat"),
        F.observation(pid, "LOINC", "10230-1", d(70), value=62, unit="%", category="imaging", rid=f"{pid}-lvef"),
        F.observation(pid, "LOINC", "19872-1", d(70), value=86, unit="%", category="exam", rid=f"{pid}-fvc"),
        F.observation(pid, "Local", "dlco-hb-pct-pred", d(70), value=74, unit="%", category="exam", rid=f"{pid}-dlco"),
        blood_pressure(pid, d(14), 124, 78, rid=f"{pid}-bp"),
        F.observation(pid, "LOINC", "29463-7", d(14), value=57.5, unit="kg", category="vital-signs", rid=f"{pid}-wt"),
        F.observation(pid, "LOINC", "8302-2", d(14), value=158, unit="cm", category="vital-signs", rid=f"{pid}-ht"),
        # Blood counts: mild anaemia of chronic disease and lymphopenia, as in active SLE.
        F.observation(pid, "LOINC", "718-7", d(14), value=108, unit="g/L", ref_high=150, rid=f"{pid}-hb"),
        F.observation(pid, "LOINC", "6690-2", d(14), value=4.1, unit="10*9/L", ref_high=11.0, rid=f"{pid}-wbc"),
        F.observation(pid, "LOINC", "751-8", d(14), value=2.9, unit="10*9/L", ref_high=7.5, rid=f"{pid}-anc"),
        F.observation(pid, "LOINC", "731-0", d(14), value=0.7, unit="10*9/L", ref_high=4.0, interpretation="L", rid=f"{pid}-lym"),
        F.observation(pid, "LOINC", "777-3", d(14), value=168, unit="10*9/L", ref_high=400, rid=f"{pid}-plt"),
        # Infection screen and pregnancy test.
        negative(pid, "56888-1", d(37), rid=f"{pid}-hiv"),
        negative(pid, "5196-1", d(37), rid=f"{pid}-hbsag"),
        negative(pid, "16933-4", d(37), rid=f"{pid}-hbc"),
        negative(pid, "13955-0", d(37), rid=f"{pid}-hcv"),
        negative(pid, "2118-8", d(5), rid=f"{pid}-hcg"),
    ]


# --------------------------------------------------------------------------------------------
# 004 nct06350110 (adults 18-90)
# --------------------------------------------------------------------------------------------

def obs_days_ago(pid: str, at: datetime, code: str, days: float, system: str = "LOINC", **kw: Any) -> Resource:
    return F.observation(pid, system, code, F.days_before(at, days), **kw)


def negative_days_ago(pid: str, at: datetime, code: str, days: float = 30) -> Resource:
    return obs_days_ago(pid, at, code, days, value_code=("SNOMEDCT", "260385009"), interpretation="NEG")


def positive_days_ago(pid: str, at: datetime, code: str, days: float = 30) -> Resource:
    return obs_days_ago(pid, at, code, days, value_code=("SNOMEDCT", "10828004"), interpretation="POS")


def woman_004(pid: str) -> Resource:
    return F.patient(pid, date(1990, 3, 14), "female", name="Lin")


def man_004(pid: str) -> Resource:
    return F.patient(pid, date(1984, 8, 2), "male", name="Chen")


def fits_004(pid: str, at: datetime) -> list[Resource]:
    """A 36-year-old woman with refractory SLE who fits NCT06350110.

    SLE since 2017 (EULAR/ACR 2019 total 20), active despite hydroxychloroquine, prednisone,
    mycophenolate (stopped 3 weeks ago for the washout before leukapheresis), a past belimumab
    course and rituximab in 2021 (CD20, long recovered: CD19+ B cells 210 /uL). Mild cytopenias
    of lupus, normal liver and kidney function, normal echo, negative serology and a negative
    serum hCG a week ago; no live vaccine, no malignancy, no CNS disease.
    """
    def d(n: float) -> datetime:
        return F.days_before(at, n)

    return [
        woman_004(pid),
        F.condition(pid, "SNOMEDCT", "55464009", date(2017, 5, 1)),
        obs_days_ago(pid, at, "eular-acr-2019", 700, system="Local", value=20, unit="{score}", category="survey"),
        obs_days_ago(pid, at, "selena-sledai", 10, system="Local", value=12, unit="{score}", category="survey"),
        obs_days_ago(pid, at, "8116-6", 10, value=210, unit="/uL"),
        obs_days_ago(pid, at, "718-7", 10, value=108, unit="g/L"),
        obs_days_ago(pid, at, "6690-2", 10, value=3.6, unit="10*9/L"),
        obs_days_ago(pid, at, "751-8", 10, value=2.3, unit="10*9/L"),
        obs_days_ago(pid, at, "777-3", 10, value=148, unit="10*9/L"),
        obs_days_ago(pid, at, "1920-8", 10, value=24, unit="U/L", ref_high=40),
        obs_days_ago(pid, at, "1742-6", 10, value=19, unit="U/L", ref_high=35),
        obs_days_ago(pid, at, "1975-2", 10, value=0.5, unit="mg/dL", ref_high=1.2),
        obs_days_ago(pid, at, "2160-0", 10, value=0.78, unit="mg/dL", ref_high=1.02),
        obs_days_ago(pid, at, "29463-7", 10, value=58, unit="kg", category="vital-signs"),
        obs_days_ago(pid, at, "8302-2", 10, value=163, unit="cm", category="vital-signs"),
        obs_days_ago(pid, at, "18043-0", 60, value=63, unit="%", category="imaging"),
        negative_days_ago(pid, at, "2118-8", 7),
        negative_days_ago(pid, at, "56888-1", 30),
        negative_days_ago(pid, at, "5196-1", 30),
        negative_days_ago(pid, at, "16933-4", 30),
        negative_days_ago(pid, at, "13955-0", 30),
        negative_days_ago(pid, at, "24110-9", 30),
        F.medication_request(pid, "5521", date(2017, 6, 1), None, dose_mg=200, per_day=2),
        F.medication_request(pid, "8640", d(120), None, dose_mg=10),
        F.medication_request(pid, "68149", date(2019, 6, 1), d(21), dose_mg=1000, per_day=2, status="stopped"),
        F.medication_statement(pid, "1092437", date(2022, 1, 10), date(2023, 6, 30)),
        F.medication_statement(pid, "121191", date(2021, 3, 1), date(2021, 3, 15)),
    ]
