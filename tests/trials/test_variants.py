"""Every committed synthetic patient, recoded the way other sites code the same facts, keeps its
verdict or moves only towards "possibly eligible" (issue 11).

Recodings (each applied to the whole record):
- who-icd10: ICD-10-CM diagnoses written in WHO ICD-10 (the longest WHO code the CM code
  refines), SNOMED CT codings dropped where an ICD code says the same;
- cm-only / snomed-only: one coding per diagnosis, the other dropped (where both were given);
- si-units / conventional-units: creatinine, bilirubin in umol/L or mg/dL (with the matching
  LOINC code), haemoglobin g/L <-> g/dL, cell counts in /uL, ranges converted too;
- comparators: results within their range reported as "<= value", viral loads not detected
  as "< 20 IU/mL".
A recoding may make a criterion unknown (a bound that cannot decide), never change a decision.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import pytest

from cds.eligibility import evaluate_trials
from cds.paths import PATIENTS_DIR
from cds.terminology.definitions import ICD10, ICD10CM, SNOMEDCT, _icd_codes

PATIENTS = sorted(p.stem for p in PATIENTS_DIR.glob("*.json"))
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
Bundle = dict[str, Any]


@lru_cache(maxsize=1)
def _who_codes() -> frozenset[str]:
    return frozenset(c for c, _ in _icd_codes(ICD10))


def who_of(cm_code: str) -> str | None:
    """The WHO ICD-10 code an ICD-10-CM code refines: its longest prefix that WHO has."""
    for n in range(len(cm_code), 2, -1):
        head = cm_code[:n].rstrip(".")
        if head in _who_codes():
            return head
    return None


def _codings(bundle: Bundle, rtype: str = "Condition") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype and e["resource"].get("code")]


def who_icd10(bundle: Bundle) -> Bundle:
    for c in _codings(bundle):
        codings = c["code"].get("coding") or []
        cm = [x for x in codings if x.get("system") == ICD10CM]
        if not cm:
            continue
        mapped = [{"system": ICD10, "code": who_of(x["code"])} for x in cm if who_of(x["code"])]
        if mapped:
            c["code"]["coding"] = mapped + [x for x in codings if x.get("system") not in (ICD10CM, SNOMEDCT)]
    return bundle


def only(system: str) -> Callable[[Bundle], Bundle]:
    def recode(bundle: Bundle) -> Bundle:
        for c in _codings(bundle):
            codings = c["code"].get("coding") or []
            if any(x.get("system") == system for x in codings) and len({x.get("system") for x in codings}) > 1:
                c["code"]["coding"] = [x for x in codings if x.get("system") == system]
        return bundle
    return recode


# (loinc, unit) -> (loinc, unit, factor): the same analyte in the other unit system.
UNIT_SWAPS = {
    ("2160-0", "mg/dL"): ("14682-9", "umol/L", 88.4), ("14682-9", "umol/L"): ("2160-0", "mg/dL", 1 / 88.4),
    ("1975-2", "mg/dL"): ("14631-6", "umol/L", 17.1), ("14631-6", "umol/L"): ("1975-2", "mg/dL", 1 / 17.1),
    ("718-7", "g/L"): ("718-7", "g/dL", 0.1), ("718-7", "g/dL"): ("718-7", "g/L", 10.0),
    ("6690-2", "10*9/L"): ("6690-2", "/uL", 1000.0), ("751-8", "10*9/L"): ("751-8", "/uL", 1000.0),
    ("777-3", "10*9/L"): ("777-3", "/uL", 1000.0), ("731-0", "10*9/L"): ("731-0", "/uL", 1000.0),
}


def units(to_si: bool) -> Callable[[Bundle], Bundle]:
    def recode(bundle: Bundle) -> Bundle:
        for o in _codings(bundle, "Observation"):
            q = o.get("valueQuantity")
            code = next((x["code"] for x in o["code"].get("coding") or [] if x.get("system") == LOINC), None)
            swap = UNIT_SWAPS.get((code, (q or {}).get("code")))
            if not q or swap is None or ((swap[1] in ("umol/L", "g/L")) != to_si and swap[1] != "/uL"):
                continue
            new_code, new_unit, factor = swap
            q.update(value=round(q["value"] * factor, 4), unit=new_unit, code=new_unit, system=UCUM)
            for coding in o["code"]["coding"]:
                if coding.get("system") == LOINC and coding["code"] == code:
                    coding.update(code=new_code)
                    coding.pop("display", None)
            for rr in o.get("referenceRange") or []:
                for side in ("low", "high"):
                    if rr.get(side, {}).get("value") is not None:
                        rr[side].update(value=round(rr[side]["value"] * factor, 4), unit=new_unit, code=new_unit, system=UCUM)
        return bundle
    return recode


VIRAL = {"42595-9", "11011-4", "72493-0", "30247-1"}


def comparators(bundle: Bundle) -> Bundle:
    for o in _codings(bundle, "Observation"):
        q = o.get("valueQuantity")
        high = next((rr["high"].get("value") for rr in o.get("referenceRange") or [] if rr.get("high")), None)
        code = next((x["code"] for x in o["code"].get("coding") or [] if x.get("system") == LOINC), None)
        if code in VIRAL and (q is None or q.get("comparator") == "<"):
            o.pop("valueCodeableConcept", None)
            o["valueQuantity"] = {"value": 20, "comparator": "<", "unit": "[IU]/mL", "code": "[IU]/mL", "system": UCUM}
        elif q and "comparator" not in q and high is not None and q["value"] <= high:
            q["comparator"] = "<="
    return bundle


RECODINGS: dict[str, Callable[[Bundle], Bundle]] = {
    "who-icd10": who_icd10,
    "cm-only": only(ICD10CM),
    "snomed-only": only(SNOMEDCT),
    "si-units": units(True),
    "conventional-units": units(False),
    "comparators": comparators,
}


def _load(name: str) -> Bundle:
    return json.loads((PATIENTS_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def before(rules_engine, catalogue, eval_at) -> dict[str, dict[str, str]]:
    return {name: {r.researchStudy: r.verdict for r in evaluate_trials(rules_engine, catalogue, _load(name), eval_at)}
            for name in PATIENTS}


def test_recodings_change_the_records() -> None:
    """Each recoding changes some committed record (else it tests nothing)."""
    for label, recode in RECODINGS.items():
        assert any(recode(copy.deepcopy(_load(n))) != _load(n) for n in PATIENTS), label
    assert who_of("M32.10") == "M32.1" and who_of("C83.30") == "C83.3" and who_of("N18.4") == "N18.4"


@pytest.mark.parametrize("label", list(RECODINGS))
def test_a_recoded_record_keeps_its_verdict_or_becomes_possibly(rules_engine, catalogue, eval_at, before, label):
    moved = []
    for name in PATIENTS:
        bundle = RECODINGS[label](_load(name))
        for r in evaluate_trials(rules_engine, catalogue, bundle, eval_at):
            was = before[name][r.researchStudy]
            if r.verdict != was:
                assert r.verdict == "possibly-eligible", (label, name, r.researchStudy, was, r.verdict,
                                                          [(c.id, c.status) for c in r.criteria if c.status != "met"])
                moved.append((name, r.researchStudy, was))
    # Units and codings carry the same facts: those recodings move nothing.
    if label in ("who-icd10", "cm-only", "snomed-only", "si-units", "conventional-units"):
        assert moved == [], moved
