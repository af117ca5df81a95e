"""Verdicts of the synthetic patients (cds.synthetic.patients) through the real engine.

One engine over the catalogue as the service loads it (fhir_bundles/), every patient evaluated
once per session. Checks: each patient's verdict per trial equals the registry's expectation;
each single-failure variant fails on exactly the criteria the registry names; and the cases the
patients issue asks for by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cds.catalogue import Catalogue
from cds.eligibility import TrialResult, evaluate_trials
from cds.engine import Engine
from cds.paths import BUNDLES_DIR, PATIENTS_DIR
from cds.record import assemble_record
from cds.synthetic import patients as P
from tests.conftest import EVAL_AT

SEED = P.SEED_OF
# Trials with a serology exclusion (hepatitis B/C, HIV, syphilis): 000's seed has no exclusions.
NEEDS_SEROLOGY = (P.T001, P.T002, P.T003, P.T004)
SEROLOGY_CODES = {"5196-1", "16933-4", "42595-9", "13955-0", "11011-4", "56888-1", "24110-9"}

Results = dict[str, dict[str, TrialResult]]


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue.from_directory(BUNDLES_DIR)


@pytest.fixture(scope="session")
def patients_engine(catalogue: Catalogue) -> Iterator[Engine]:
    engine = Engine(catalogue.libraries, pool_size=1).start()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def bundles() -> dict[str, dict[str, Any]]:
    return P.generate(EVAL_AT)


@pytest.fixture(scope="session")
def results(patients_engine: Engine, catalogue: Catalogue, bundles: dict[str, dict[str, Any]]) -> Results:
    return {name: {r.researchStudy: r for r in evaluate_trials(patients_engine, catalogue, bundle, EVAL_AT)}
            for name, bundle in bundles.items()}


def deciding(result: TrialResult) -> set[str]:
    """The criteria that make the verdict: failed inclusions and met exclusions for 'excluded';
    the undecided data criteria for 'possibly eligible'; none for 'likely eligible'."""
    if result.verdict == "excluded":
        return {c.id for c in result.criteria
                if (c.type == "inclusion" and c.status == "not-met") or (c.type == "exclusion" and c.status == "met")}
    if result.verdict == "possibly-eligible":
        return {c.id for c in result.criteria if c.type != "review" and c.status == "unknown"}
    return set()


def criterion(result: TrialResult, cid: str) -> Any:
    return next(c for c in result.criteria if c.id == cid)


VERDICT_CASES = [pytest.param(name, trial, id=f"{SEED[trial]}-{name}")
                 for name, p in P.REGISTRY.items() for trial in P.TRIALS]
DECIDING_CASES = [pytest.param(name, trial, id=f"{SEED[trial]}-{name}")
                  for name, p in P.REGISTRY.items() for trial in p.deciding]


def test_catalogue_has_the_five_trials(catalogue: Catalogue) -> None:
    assert {t.id for t in catalogue.trials} == set(P.TRIALS)
    assert all(set(p.expected) == set(P.TRIALS) for p in P.REGISTRY.values())


@pytest.mark.parametrize(("name", "trial"), VERDICT_CASES)
def test_verdict(results: Results, name: str, trial: str) -> None:
    result = results[name][trial]
    assert result.verdict == P.REGISTRY[name].expected[trial], sorted(deciding(result))


@pytest.mark.parametrize(("name", "trial"), DECIDING_CASES)
def test_deciding_criteria(results: Results, name: str, trial: str) -> None:
    """A variant changes one thing in its base: exactly the criteria reading it decide."""
    assert deciding(results[name][trial]) == set(P.REGISTRY[name].deciding[trial])


def test_every_trial_has_a_patient_it_fits(results: Results) -> None:
    for trial, name in P.FITS.items():
        assert results[name][trial].verdict == "likely-eligible", (trial, name)


def test_adult_likely_is_likely_for_every_adult_trial(results: Results) -> None:
    assert {t for t, r in results["adult-likely"].items() if r.verdict == "likely-eligible"} == set(P.ADULT_TRIALS)


def test_egfr_25_with_creatinine_2_6_mg_dl(results: Results, bundles: dict[str, dict[str, Any]]) -> None:
    """002, 003 and 004 exclude: 002 by eGFR < 30, 003 by creatinine clearance < 30 (derived by
    Cockcroft-Gault), 004 by creatinine > 2.5 mg/dL."""
    record = {e["resource"]["id"]: e["resource"] for e in bundles["low-egfr"]["entry"]}
    assert record["low-egfr-creat"]["valueQuantity"]["value"] == 2.6
    assert record["low-egfr-egfr"]["valueQuantity"]["value"] == 25
    r = results["low-egfr"]
    assert r[P.T002].verdict == "excluded" and criterion(r[P.T002], "002-E3").status == "met"
    assert r[P.T004].verdict == "excluded" and criterion(r[P.T004], "004-E1").status == "met"
    assert r[P.T003].verdict == "excluded" and criterion(r[P.T003], "003-E3").status == "met"
    assert any("Cockcroft-Gault" in (e.note or "") for e in criterion(r[P.T003], "003-E3").evidence)


def test_004_excludes_creatinine_230_umol_l(results: Results) -> None:
    result = results["creatinine-umol-high"][P.T004]
    e1 = criterion(result, "004-E1")
    assert result.verdict == "excluded" and e1.status == "met"
    assert any(e.value == 230 and e.unit == "umol/L" for e in e1.evidence), e1.evidence


def test_001_hepatitis_b(results: Results) -> None:
    """HBsAg positive with high HBV DNA excludes; isolated anti-HBc with undetectable DNA does not."""
    chronic = results["hbsag-positive-dna-high"][P.T001]
    assert chronic.verdict == "excluded" and criterion(chronic, "001-E8").status == "met"
    past = results["antihbc-positive-dna-undetectable"][P.T001]
    assert criterion(past, "001-E8").status == "not-met" and past.verdict == "likely-eligible"


def test_no_serology_is_never_likely_where_serology_is_needed(results: Results) -> None:
    for trial in NEEDS_SEROLOGY:
        result = results["adult-missing-serology"][trial]
        assert result.verdict != "likely-eligible", trial
        if results["adult-likely"][trial].verdict == "likely-eligible":
            assert result.verdict == "possibly-eligible", trial
            missing = {m.code for c in result.criteria if c.status == "unknown" for m in c.missing}
            assert missing & SEROLOGY_CODES, (trial, missing)  # the card suggests ordering them


@pytest.mark.parametrize("name", ["no-sle", "drug-induced-lupus-only"])
def test_without_sle_excluded_from_all_five(results: Results, name: str) -> None:
    assert {t: r.verdict for t, r in results[name].items()} == {t: "excluded" for t in P.TRIALS}


def test_drug_induced_lupus_is_named_as_not_sle(results: Results) -> None:
    i2 = criterion(results["drug-induced-lupus-only"][P.T004], "004-I2")
    assert any("drug-induced lupus is not SLE" in (e.note or "") for e in i2.evidence), i2.evidence


@pytest.mark.parametrize(("name", "in_population"),
                         [("adult-likely", True), ("no-sle", False), ("drug-induced-lupus-only", False)])
def test_screen(patients_engine: Engine, bundles: dict[str, dict[str, Any]], name: str, in_population: bool) -> None:
    """The service's gate (SLEScreen): patients without SLE get no cards at all."""
    value = patients_engine.evaluate(bundles[name], ["SLEScreen"], EVAL_AT).raw["SLEScreen"]["In Catalogue Population"]
    assert value is in_population


@pytest.mark.parametrize("name", ["adult-likely", "adult-missing-serology"])
def test_hook_prefetch_carries_everything_the_rules_read(patients_engine: Engine, catalogue: Catalogue,
                                                         results: Results, name: str) -> None:
    """The committed hook request, assembled as the service does, gives the same verdicts."""

    doc = json.loads((PATIENTS_DIR / "hooks" / f"{name}.json").read_text(encoding="utf-8"))
    record = assemble_record(name, P.advertised_queries(BUNDLES_DIR), doc["prefetch"], None)
    via_hook = {r.researchStudy: r.verdict for r in evaluate_trials(patients_engine, catalogue, record.bundle, EVAL_AT)}
    assert via_hook == {t: r.verdict for t, r in results[name].items()}
