"""Properties over every trial (hypothesis): what the catalogue cannot classify never helps.

- Adding to a record a resource the catalogue cannot classify (a diagnosis, procedure,
  medication or vaccine coded in a system or with a code no value set holds, or text only)
  never turns a verdict into "likely eligible".
- Adding a classifiable, unrelated one (an ICD-10 / ICD-10-CM code outside every diagnosis value
  set, a SNOMED CT diagnosis or an RxNorm medication the catalogue knows as "other") never
  changes a verdict.

Records: the committed synthetic patients (fhir_bundles/patients), evaluated once each for the
"before" verdicts; each example adds one resource and evaluates every trial again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.eligibility import evaluate_trials
from cds.paths import PATIENTS_DIR
from cds.synthetic import fhir as F
from cds.terminology import committed_value_sets
from cds.terminology.definitions import ICD10, ICD10CM, _icd_codes

VS = "https://trial-cds.dev/ValueSet/"
PATIENTS = sorted(p.stem for p in PATIENTS_DIR.glob("*.json"))
EXAMPLES = 25


def _load(name: str) -> dict[str, Any]:
    return json.loads((PATIENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _pid(bundle: dict[str, Any]) -> str:
    return next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


@lru_cache(maxsize=1)
def _unrelated_icd() -> tuple[tuple[str, str], ...]:
    """ICD-10 and ICD-10-CM codes in no diagnosis value set of the catalogue (a sample)."""
    value_sets = committed_value_sets()
    used = {(c.system, c.code) for vs in value_sets.values() for c in vs.codes}
    out = []
    for system in (ICD10, ICD10CM):
        codes = [c for c, _ in _icd_codes(system) if (system, c) not in used]
        out += [(system, c) for c in codes[:: max(1, len(codes) // 400)]]
    return tuple(out)


def _expansion(name: str) -> list[tuple[str, str]]:
    return [(c.system, c.code) for c in committed_value_sets()[VS + name].codes]


@st.composite
def unclassifiable(draw: Any, pid: str, at: datetime) -> dict[str, Any]:
    days = draw(st.integers(min_value=0, max_value=20))
    when = at - timedelta(days=days)
    kind = draw(st.sampled_from(["condition-local", "condition-text", "condition-unknown-snomed",
                                 "procedure-cpt", "medication-unknown", "vaccine-snomed"]))
    rid = f"{pid}-x"
    if kind.startswith("condition"):
        res = F.condition(pid, "SNOMEDCT", "55464009", when, rid=rid)
        res["code"] = {
            "condition-local": {"coding": [{"system": "http://hospital.example.org/dx", "code": "X12"}], "text": "local diagnosis"},
            "condition-text": {"text": "lesion under investigation"},
            "condition-unknown-snomed": {"coding": [{"system": "http://snomed.info/sct", "code": "999000999"}]},
        }[kind]
        return res
    if kind == "procedure-cpt":
        res = F.procedure(pid, "SNOMEDCT", "0", when, rid=rid)
        res["code"] = {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "38241"}], "text": "stem cell infusion"}
        return res
    if kind == "medication-unknown":
        res = F.medication_request(pid, "0", when, None, rid=rid)
        res["medicationCodeableConcept"] = {"coding": [{"system": "http://hospital.example.org/drugs", "code": "D9"}],
                                            "text": "unknown medicine"}
        return res
    res = F.immunization(pid, "03", when, rid=rid)
    res["vaccineCode"] = {"coding": [{"system": "http://snomed.info/sct", "code": "999000998"}], "text": "vaccine"}
    return res


@st.composite
def classifiable_unrelated(draw: Any, pid: str, at: datetime) -> dict[str, Any]:
    days = draw(st.integers(min_value=0, max_value=3000))
    when = at - timedelta(days=days)
    kind = draw(st.sampled_from(["icd", "snomed", "medication"]))
    rid = f"{pid}-y"
    if kind == "icd":
        system, code = draw(st.sampled_from(_unrelated_icd()))
        return F.condition(pid, system, code, when, rid=rid, clinical_status=draw(st.sampled_from(["active", "resolved"])))
    if kind == "snomed":
        system, code = draw(st.sampled_from([c for c in _expansion("other-known-diagnoses")
                                             if c[1] not in {"38341003", "59621000"}]))  # hypertension: 003-E2 reads it
        return F.condition(pid, "SNOMEDCT", code, when, rid=rid)
    system, code = draw(st.sampled_from(_expansion("other-known-medications")))
    return F.medication_request(pid, code, when, None, rid=rid, status="active")


@pytest.fixture(scope="module")
def before(rules_engine, catalogue, eval_at) -> dict[str, dict[str, str]]:
    return {name: {r.researchStudy: r.verdict for r in evaluate_trials(rules_engine, catalogue, _load(name), eval_at)}
            for name in PATIENTS}


def _after(engine: Any, catalogue: Any, name: str, extra: dict[str, Any], at: datetime) -> dict[str, str]:
    bundle = _load(name)
    bundle["entry"].append({"fullUrl": f"urn:uuid:{extra['id']}", "resource": extra})
    return {r.researchStudy: r.verdict for r in evaluate_trials(engine, catalogue, bundle, at)}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_an_unclassifiable_resource_never_makes_a_verdict_likely(rules_engine, catalogue, eval_at, before, data):
    name = data.draw(st.sampled_from(PATIENTS))
    extra = data.draw(unclassifiable(_pid(_load(name)), eval_at))
    after = _after(rules_engine, catalogue, name, extra, eval_at)
    for trial, verdict in after.items():
        if verdict == "likely-eligible":
            assert before[name][trial] == "likely-eligible", (name, trial, extra)


@pytest.mark.parametrize("name, trial", [("child-likely", "zju-children-cd19-cart-sle"), ("adult-likely", "nct07318259"),
                                         ("adult-likely", "nct06710717"), ("adult-likely", "nct06350110")])
def test_an_unclassifiable_recent_diagnosis_takes_likely_away(rules_engine, catalogue, eval_at, before, name, trial):
    """Every trial with a 'no record found' exclusion: likely becomes possibly, never stays likely."""
    assert before[name][trial] == "likely-eligible"
    extra = F.condition(_pid(_load(name)), "SNOMEDCT", "55464009", eval_at - timedelta(days=2), rid="x-unclassified")
    extra["code"] = {"coding": [{"system": "http://hospital.example.org/dx", "code": "X12"}], "text": "local diagnosis"}
    assert _after(rules_engine, catalogue, name, extra, eval_at)[trial] == "possibly-eligible"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_classifiable_unrelated_resource_never_changes_a_verdict(rules_engine, catalogue, eval_at, before, data):
    name = data.draw(st.sampled_from(PATIENTS))
    extra = data.draw(classifiable_unrelated(_pid(_load(name)), eval_at))
    assert _after(rules_engine, catalogue, name, extra, eval_at) == before[name], (name, extra)
