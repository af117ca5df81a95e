"""Records coded the way real EHRs code them, class by class (issue 11).

Each case starts from a patient who is likely eligible (the adult of the synthetic registry for
the adult trials, the trial's own fitting child for 001), adds what a site would record in its
own coding (WHO ICD-10 instead of ICD-10-CM, SNOMED CT only, text answers, a value reported
against a limit, a lab limit without a unit, a child's lab without a range ...) and checks the
criterion's status and the trial's verdict, through the same evaluation layer the card and
`trial-cds evaluate --json` use. Every status comes from the CQL.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from cds.eligibility import TrialResult, evaluate_trials
from cds.synthetic import fhir as F
from cds.synthetic.patients import adult_record, child_record
from cds.synthetic.trial_records import fits_000

from .kit import Chart, changed, cond, medrq, record, replacing, vaccine, without

T000, T001, T002, T003, T004 = ("tongji-cd19-bcma-cart-sle", "zju-children-cd19-cart-sle", "nct07318259",
                                "nct06710717", "nct06350110")
ADULT_TRIALS = (T000, T002, T003, T004)
PID = "rw"


def verdicts(engine: Any, catalogue: Any, resources: list[dict[str, Any]], at: datetime) -> dict[str, TrialResult]:
    return {r.researchStudy: r for r in evaluate_trials(engine, catalogue, F.bundle(resources), at)}


def status(result: TrialResult, cid: str) -> str:
    return next(c.status for c in result.criteria if c.id == cid)


def crit(result: TrialResult, cid: str) -> Any:
    return next(c for c in result.criteria if c.id == cid)


def text_of(result: TrialResult, cid: str) -> str:
    c = crit(result, cid)
    return " | ".join(" ".join(str(x) for x in (e.value, e.note) if x is not None) for e in c.evidence)


@pytest.fixture(scope="module")
def adult(eval_at: datetime) -> list[dict[str, Any]]:
    return adult_record(PID, eval_at)


@pytest.fixture(scope="module")
def child(eval_at: datetime) -> list[dict[str, Any]]:
    return child_record(PID, eval_at)


def test_baselines_are_likely(rules_engine, catalogue, eval_at, adult, child):
    got = verdicts(rules_engine, catalogue, adult, eval_at)
    assert {t for t, r in got.items() if r.verdict == "likely-eligible"} == set(ADULT_TRIALS)
    assert verdicts(rules_engine, catalogue, child, eval_at)[T001].verdict == "likely-eligible"


# -- diagnoses in WHO ICD-10, ICD-10-CM and SNOMED CT only ------------------------------------------

@pytest.mark.parametrize("system, code", [("ICD10", "C50.9"), ("ICD10CM", "C50.911"), ("SNOMEDCT", "254837009")])
def test_active_breast_cancer_in_any_coding_is_never_likely(rules_engine, catalogue, eval_at, adult, system, code):
    """002 and 003 exclude an active cancer; 004 excepts "breast cancer" (read as in situ: the
    investigator confirms); none may say likely."""
    got = verdicts(rules_engine, catalogue, adult + record(PID, eval_at, cond(system, code, 60, name="ca")), eval_at)
    assert status(got[T002], "002-E10") == "met" and got[T002].verdict == "excluded"
    assert status(got[T003], "003-E1") == "met" and got[T003].verdict == "excluded"
    assert status(got[T004], "004-E17") == "unknown" and got[T004].verdict == "possibly-eligible"


@pytest.mark.parametrize("system, code", [("SNOMEDCT", "91857003"), ("ICD10", "C91.0"), ("ICD10CM", "C91.01")])
def test_past_leukaemia_excludes_the_childrens_trial(rules_engine, catalogue, eval_at, child, system, code):
    resources = child + record(PID, eval_at, cond(system, code, date(2017, 3, 1), name="all", clinical_status="resolved"))
    got = verdicts(rules_engine, catalogue, resources, eval_at)[T001]
    assert status(got, "001-E11") == "met" and got.verdict == "excluded"


@pytest.mark.parametrize("system, code", [("ICD10", "B20"), ("ICD10CM", "B20"), ("SNOMEDCT", "86406008")])
def test_hiv_diagnosis_in_any_coding_excludes(rules_engine, catalogue, eval_at, adult, system, code):
    got = verdicts(rules_engine, catalogue, adult + record(PID, eval_at, cond(system, code, 900, name="hiv")), eval_at)
    assert status(got[T003], "003-E5") == "met"
    assert got[T003].verdict == got[T002].verdict == got[T004].verdict == "excluded"


def test_lupus_nephritis_in_who_dagger_asterisk_coding(rules_engine, catalogue, eval_at, child):
    """WHO ICD-10 codes lupus nephritis as M32.1+ N08.5*; the asterisk code is lupus nephritis."""
    resources = child + record(PID, eval_at, cond("ICD10", "N08.5", 200, name="ln"))
    got = verdicts(rules_engine, catalogue, resources, eval_at)[T001]
    assert status(got, "001-E3") == "unknown"  # active lupus nephritis: the investigator judges
    assert "active lupus nephritis" in text_of(got, "001-E3")


# -- infection needing systemic treatment ---------------------------------------------------------------

def _pneumonia(at: datetime) -> list[dict[str, Any]]:
    c = Chart(PID, at)
    pneumonia = c.cond("SNOMEDCT", "233604007", 3, name="pneumonia")
    pneumonia["code"]["coding"].append(F.coding("ICD10CM", "J18.9", "Pneumonia, unspecified organism"))
    return [pneumonia]


@pytest.mark.parametrize("drug", ["2193", "1665021"], ids=["ceftriaxone-ingredient", "ceftriaxone-1g-injection-scd"])
def test_pneumonia_on_iv_ceftriaxone_excludes_the_childrens_trial(rules_engine, catalogue, eval_at, child, drug):
    resources = child + _pneumonia(eval_at) + record(PID, eval_at, medrq(drug, 3, None, name="ctx", dose_mg=2000))
    got = verdicts(rules_engine, catalogue, resources, eval_at)[T001]
    assert status(got, "001-E6") == "met" and got.verdict == "excluded"
    assert "systemic anti-infective" in text_of(got, "001-E6")


def test_pneumonia_without_treatment_on_record_is_unknown(rules_engine, catalogue, eval_at, child):
    got = verdicts(rules_engine, catalogue, child + _pneumonia(eval_at), eval_at)[T001]
    assert status(got, "001-E6") == "unknown" and got.verdict == "possibly-eligible"


def test_systemic_anti_infective_alone_keeps_infection_exclusions_open(rules_engine, catalogue, eval_at, adult, child):
    """Co-trimoxazole or ceftriaxone with no infection coded: treatment of an uncoded infection, or
    prophylaxis? Never "no infection"."""
    drug = record(PID, eval_at, medrq("2193", 2, None, name="ctx"))
    assert status(verdicts(rules_engine, catalogue, child + drug, eval_at)[T001], "001-E6") == "unknown"
    got = verdicts(rules_engine, catalogue, adult + drug, eval_at)
    assert status(got[T002], "002-E4") == "unknown" and got[T002].verdict == "possibly-eligible"
    assert status(got[T004], "004-E8") == "unknown" and got[T004].verdict == "possibly-eligible"


# -- codes the rules cannot read ----------------------------------------------------------------------

def _unclassified_condition(at: datetime) -> list[dict[str, Any]]:
    c = Chart(PID, at)
    local = c.cond("http://hospital.example.org/diagnoses", "D-4471", 20, name="local", text="Lymphoproliferative disorder, under evaluation")
    return [local]


def test_an_unclassifiable_diagnosis_makes_no_record_found_unknown(rules_engine, catalogue, eval_at, adult, child):
    got = verdicts(rules_engine, catalogue, adult + _unclassified_condition(eval_at), eval_at)
    for trial, cid in ((T002, "002-E10"), (T003, "003-E1"), (T004, "004-E17")):
        assert status(got[trial], cid) == "unknown", (trial, cid)
        assert "could not be classified — review" in text_of(got[trial], cid)
        assert "Lymphoproliferative disorder, under evaluation" in text_of(got[trial], cid)
        assert got[trial].verdict == "possibly-eligible"
    assert got[T000].verdict == "likely-eligible"  # 000 has no "no record found" criterion
    kid = verdicts(rules_engine, catalogue, child + _unclassified_condition(eval_at), eval_at)[T001]
    assert status(kid, "001-E11") == "unknown" and kid.verdict == "possibly-eligible"


def test_a_text_only_diagnosis_cannot_be_classified(rules_engine, catalogue, eval_at, child):
    text_only = {"resourceType": "Condition", "id": f"{PID}-text", "code": {"text": "acute leukaemia in childhood"},
                 "subject": {"reference": f"Patient/{PID}"}, "clinicalStatus": F.concept(
                     "http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved")}
    got = verdicts(rules_engine, catalogue, child + [text_only], eval_at)[T001]
    assert status(got, "001-E11") == "unknown"
    assert "acute leukaemia in childhood" in text_of(got, "001-E11")


@pytest.mark.parametrize("system, code", [("ICD10", "J30.1"), ("ICD10CM", "E03.9"), ("SNOMEDCT", "61582004")])
def test_a_classifiable_unrelated_diagnosis_changes_nothing(rules_engine, catalogue, eval_at, adult, child, system, code):
    before = verdicts(rules_engine, catalogue, adult, eval_at)
    after = verdicts(rules_engine, catalogue, adult + record(PID, eval_at, cond(system, code, 400, name="other")), eval_at)
    assert {t: r.verdict for t, r in after.items()} == {t: r.verdict for t, r in before.items()}
    kid = verdicts(rules_engine, catalogue, child + record(PID, eval_at, cond(system, code, 400, name="other")), eval_at)
    assert kid[T001].verdict == "likely-eligible"


def test_an_unclassifiable_medication_keeps_medication_criteria_open(rules_engine, catalogue, eval_at, adult):
    """A CAR-T product coded with a code the value sets lack, named only in text: 004 cannot
    rule out prior CD19/BCMA therapy."""
    odd = {"resourceType": "MedicationStatement", "id": f"{PID}-odd", "status": "completed",
           "medicationCodeableConcept": {"coding": [{"system": "http://hospital.example.org/drugs", "code": "X-991"}],
                                         "text": "investigational cell product (outside study)"},
           "subject": {"reference": f"Patient/{PID}"}, "effectivePeriod": {"start": "2024-05-01", "end": "2024-05-01"}}
    got = verdicts(rules_engine, catalogue, adult + [odd], eval_at)
    assert status(got[T004], "004-E15") == "unknown" and got[T004].verdict == "possibly-eligible"


@pytest.mark.parametrize("part", [
    medrq("axicabtagene-ciloleucel", 500, 500, name="axi", system="Local"),
    changed(medrq("9999999", 500, 500, name="axi", system="RxNorm"),
            lambda r: r["medicationCodeableConcept"].update(text="Axicabtagene ciloleucel (Yescarta) infusion")),
], ids=["local-code", "unknown-code-named-by-inn"])
def test_axicabtagene_ciloleucel_is_a_prior_car_t(rules_engine, catalogue, eval_at, adult, child, part):
    kid = verdicts(rules_engine, catalogue, child + record(PID, eval_at, part), eval_at)[T001]
    assert status(kid, "001-E1") == "met" and kid.verdict == "excluded"
    got = verdicts(rules_engine, catalogue, adult + record(PID, eval_at, part), eval_at)[T004]
    assert status(got, "004-E15") == "met" and got.verdict == "excluded"


def test_a_vaccine_coded_outside_cvx_keeps_the_live_vaccine_exclusion_open(rules_engine, catalogue, eval_at, child):
    snomed_vaccine = changed(vaccine("03", 10, name="mmr"), lambda r: r.update(vaccineCode=F.concept("SNOMEDCT", "871831003")))
    got = verdicts(rules_engine, catalogue, child + record(PID, eval_at, snomed_vaccine), eval_at)[T001]
    assert status(got, "001-E9") == "unknown"


# -- limits of normal ------------------------------------------------------------------------------

def test_childs_alt_without_a_range_is_not_judged_on_the_adult_uln(rules_engine, catalogue, eval_at, child):
    """ALT 110 U/L: 2.4 x a paediatric ULN of 45 but 5 x one of 22: the lab's limit decides."""
    got = verdicts(rules_engine, catalogue, replacing(child, Chart(PID, eval_at).lab("1742-6", 110, "U/L", 7, name="alt")),
                   eval_at)[T001]
    assert status(got, "001-I4") == "unknown" and got.verdict == "possibly-eligible"
    assert "lab's upper limit not on record" in text_of(got, "001-I4")


def test_a_lab_limit_without_a_unit_is_read_in_the_results_unit(rules_engine, catalogue, eval_at, adult):
    """ALT 190 U/L with the lab's high of 35 sent without a unit: 5.4 x ULN, not below 5 x ULN."""
    alt = Chart(PID, eval_at).lab("1742-6", 190, "U/L", 7, name="alt", ref_high=35)
    alt["referenceRange"][0]["high"] = {"value": 35}
    got = verdicts(rules_engine, catalogue, replacing(adult, alt), eval_at)[T003]
    assert status(got, "003-I7") == "not-met" and got.verdict == "excluded"
    assert "read in the result's unit" in text_of(got, "003-I7")


def test_an_implausible_unitless_limit_is_never_replaced_by_a_default(rules_engine, catalogue, eval_at, adult):
    """A bilirubin result in umol/L with a high of "1.2" and no unit: 1.2 umol/L is no plausible
    ULN, so the limit cannot be read: unknown, not the default."""
    tbil = Chart(PID, eval_at).lab("14631-6", 30, "umol/L", 7, name="tbil", ref_high=1.2)
    tbil["referenceRange"][0]["high"] = {"value": 1.2}
    got = verdicts(rules_engine, catalogue, replacing(without(adult, f"{PID}-tbil"), tbil), eval_at)[T003]
    assert status(got, "003-I8") == "unknown"
    assert "could not be read" in text_of(got, "003-I8")


# -- results reported against a limit or as a flag ---------------------------------------------------

@pytest.mark.parametrize("shape", [
    {"value": 170000000, "unit": "[IU]/mL", "comparator": ">", "interpretation": "H"},
    {"value_string": ">1.7x10^8 IU/mL", "interpretation": "H"},
    {"value_string": ">1.7E8"},
], ids=["quantity-comparator", "text-with-flag", "text-e-notation"])
def test_hbv_dna_above_the_assay_range_is_positive(rules_engine, catalogue, eval_at, child, shape):
    c = Chart(PID, eval_at)
    resources = child + [c.pos("5196-1", 20, name="hbsag"), c.obs("42595-9", 20, name="hbvdna", **shape)]
    got = verdicts(rules_engine, catalogue, resources, eval_at)[T001]
    assert status(got, "001-E8") == "met" and got.verdict == "excluded"
    assert not any(m.code == "42595-9" for m in crit(got, "001-E8").missing)


@pytest.mark.parametrize("shape", [{"value": 0.2, "unit": "mg/dL", "comparator": "<"}, {"value_string": "<0.2 mg/dL"}])
def test_bilirubin_below_a_limit_decides_absolute_and_uln_criteria(rules_engine, catalogue, eval_at, adult, child, shape):
    c = Chart(PID, eval_at)
    tbil = c.obs("1975-2", 7, name="tbil", **({**shape, "ref_high": 1.2} if "value" in shape else shape))
    got = verdicts(rules_engine, catalogue, replacing(adult, tbil), eval_at)
    assert status(got[T003], "003-I8") == "met"      # < 3 x ULN
    assert status(got[T004], "004-I9") == "met"      # <= 2.0 mg/dL (with the rest of I9)
    kid = verdicts(rules_engine, catalogue, replacing(child, c.obs("1975-2", 7, name="tbil", **shape)), eval_at)[T001]
    assert status(kid, "001-I4") == "met"            # <= 2 x ULN, whatever the child's ULN


def test_alt_flagged_normal_without_a_number_meets_a_uln_multiple(rules_engine, catalogue, eval_at, adult):
    alt = Chart(PID, eval_at).obs("1742-6", 7, name="alt", value_string="within normal limits", interpretation="N")
    got = verdicts(rules_engine, catalogue, replacing(adult, alt), eval_at)[T003]
    assert status(got, "003-I7") == "met"  # N: at most 1 x the lab's ULN, so below 5 x ULN


@pytest.mark.parametrize("answer, expected", [("Reactive", "met"), ("Non-reactive", "not-met"), ("Detected", "met")])
def test_text_answers_of_serology_are_read(rules_engine, catalogue, eval_at, adult, answer, expected):
    hiv = Chart(PID, eval_at).obs("56888-1", 20, name="hiv", value_string=answer)
    got = verdicts(rules_engine, catalogue, replacing(adult, hiv), eval_at)[T003]
    assert status(got, "003-E5") == expected


# -- windows and dates ------------------------------------------------------------------------------

@pytest.mark.parametrize("trial, cid", [(T001, "001-I6"), (T002, "002-I5"), (T003, "003-I13"), (T004, "004-I11")])
def test_a_75_day_old_negative_pregnancy_test_does_not_say_not_pregnant_now(rules_engine, catalogue, eval_at, adult, child,
                                                                             trial, cid):
    base = child if trial == T001 else adult
    hcg_id = f"{PID}-hcg"
    old = Chart(PID, eval_at).neg("2118-8", 75, name="hcg")
    got = verdicts(rules_engine, catalogue, replacing(without(base, hcg_id), old), eval_at)[trial]
    assert status(got, cid) == "unknown" and got.verdict == "possibly-eligible"
    assert "14 days" in text_of(got, cid)  # the window is on the card


def test_the_pregnancy_window_is_the_same_in_every_trial(compiled_rules):
    windows = [p for p in compiled_rules["SLECommon"]["library"]["parameters"]["def"] if p["name"] == "Pregnancy Test Window"]
    assert windows and windows[0]["default"]["value"] == 14 and windows[0]["default"]["unit"] == "days"
    for name, elm in compiled_rules.items():
        assert "Pregnancy Test Window" not in {p["name"] for p in (elm["library"].get("parameters") or {}).get("def") or []} \
            or name == "SLECommon", name


def test_onset_and_recorded_date_disagreeing_about_24_weeks_is_unknown(rules_engine, catalogue, eval_at):
    resources = fits_000(PID, eval_at)
    sle = next(r for r in resources if r["id"] == f"{PID}-sle")
    sle["onsetDateTime"] = "2019-03-01"
    sle["recordedDate"] = F.iso(eval_at.date().fromordinal(eval_at.date().toordinal() - 12))
    got = verdicts(rules_engine, catalogue, resources, eval_at)[T000]
    assert status(got, "000-I3") == "unknown" and got.verdict == "possibly-eligible"
    evidence = text_of(got, "000-I3")
    assert "2019-03-01" in evidence and "disagree about at least 24 weeks" in evidence


# -- parts to confirm -------------------------------------------------------------------------------

def test_parts_needing_judgement_are_their_own_review_entries(rules_engine, catalogue, eval_at, child, adult):
    kid = verdicts(rules_engine, catalogue, child, eval_at)[T001]
    reviews = {c.id: c for c in kid.criteria if c.type == "review"}
    for cid in ("001-I4.ecg", "001-I4.lung-lesions", "001-I6.contraception", "001-E4.vasopressors", "001-E3.kidney-outlook"):
        assert reviews[cid].status == "unknown" and reviews[cid].text, cid
    assert not any((e.reference or "").startswith("confirm:") for c in kid.criteria for e in c.evidence)
    assert kid.verdict == "likely-eligible"  # to-confirm items never decide
    order = [c.id for c in kid.criteria]
    assert order.index("001-I4.ecg") == order.index("001-I4") + 1
    got = verdicts(rules_engine, catalogue, adult, eval_at)
    assert crit(got[T002], "002-E2.vasopressors").type == "review"
    assert crit(got[T003], "003-E1.other-cancer-treatment").type == "review"


@pytest.mark.parametrize("system, code", [("ICD10", "M32.1"), ("ICD10CM", "M32.14"), ("SNOMEDCT", "68815009")],
                         ids=["who-icd10", "icd10cm-lupus-nephritis", "snomed-lupus-nephritis-only"])
def test_sle_recorded_only_in_another_coding_is_sle(rules_engine, catalogue, eval_at, adult, system, code):
    sle_only = [r for r in adult if r["id"] != f"{PID}-sle"] + record(PID, eval_at, cond(system, code, 2600, name="sle2"))
    bundle = F.bundle(sle_only)
    assert rules_engine.evaluate(bundle, ["SLEScreen"], eval_at).raw["SLEScreen"]["In Catalogue Population"] is True
    got = verdicts(rules_engine, catalogue, sle_only, eval_at)
    assert status(got[T004], "004-I2") == "met" and got[T004].verdict == "likely-eligible"
