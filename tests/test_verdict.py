"""The verdict rule and the reading of criterion results (no CQL here: unit tests)."""

from __future__ import annotations

import pytest

from cds.catalogue import CriterionDef
from cds.eligibility import CriterionResult, criterion_result, decide


def c(kind: str, status: str) -> CriterionResult:
    return CriterionResult(id=f"000-I{len(kind)}", type=kind, text="t", status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("criteria", "verdict"),
    [
        ([c("inclusion", "met"), c("exclusion", "not-met")], "likely-eligible"),
        ([c("inclusion", "met"), c("exclusion", "not-met"), c("review", "unknown")], "likely-eligible"),
        ([c("inclusion", "unknown"), c("exclusion", "not-met")], "possibly-eligible"),
        ([c("inclusion", "met"), c("exclusion", "unknown")], "possibly-eligible"),
        ([c("inclusion", "not-met"), c("exclusion", "unknown")], "excluded"),
        ([c("inclusion", "unknown"), c("exclusion", "met")], "excluded"),
        ([c("inclusion", "met"), c("review", "not-met")], "likely-eligible"),
    ],
    ids=["all-met", "review-ignored", "inclusion-unknown", "exclusion-unknown", "inclusion-fails",
         "exclusion-met", "review-never-decides"],
)
def test_verdict_rule(criteria: list[CriterionResult], verdict: str) -> None:
    assert decide(criteria) == verdict


DEFN = CriterionDef(id="004-E1", kind="exclusion", define="E1 Creatinine", text="creatinine > 2.5", exclude=True)


def test_criterion_result_reads_evidence_and_missing() -> None:
    raw = {
        "status": "met",
        "evidence": [{"reference": "Observation/1", "value": "230", "unit": "umol/L",
                      "date": {"@type": "DateTime", "value": "2026-11-16T00:00:00+00:00"}, "note": "compared"}],
        "missing": [{"@type": "Code", "code": "2160-0", "system": "http://loinc.org", "display": "Creatinine"},
                    {"@type": "Code", "code": "2160-0", "system": "http://loinc.org", "display": "Creatinine"}],
    }
    r = criterion_result(DEFN, raw)
    assert r.status == "met" and r.type == "exclusion"
    assert r.evidence[0].value == 230 and r.evidence[0].unit == "umol/L"
    assert r.evidence[0].date == "2026-11-16T00:00:00+00:00"
    assert [m.code for m in r.missing] == ["2160-0"]


@pytest.mark.parametrize("raw", [None, {}, {"status": "maybe"}, [1, 2], "met"])
def test_malformed_rule_output_is_unknown_never_met(raw: object) -> None:
    r = criterion_result(DEFN, raw)
    assert r.status == "unknown"
    assert "gave no result" in (r.evidence[0].note or "")
