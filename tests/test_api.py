"""The Python API (`cds.evaluate`, `cds.evaluate_trials`) and `trial-cds evaluate` (DESIGN contract)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from typer.testing import CliRunner

import cds
from cds.cli import app
from cds.engine.values import CqlDateTime
from cds.paths import PATIENTS_DIR

from .conftest import EVAL_AT

ADULT = PATIENTS_DIR / "adult-likely.json"
TRIALS = {"tongji-cd19-bcma-cart-sle", "zju-children-cd19-cart-sle", "nct07318259", "nct06710717", "nct06350110"}


@pytest.fixture(scope="module")
def adult() -> dict:
    return json.loads(ADULT.read_text())


def test_evaluate_returns_typed_values_of_every_define(adult: dict) -> None:
    result = cds.evaluate(adult, ["SLECommon"], EVAL_AT)
    common = result["SLECommon"]
    assert common["Has SLE"] is True
    assert isinstance(common["Age In Years"], int) and common["Age In Years"] == 29
    egfr = common["eGFR"]
    # The engine keeps CQL Decimals and Integers as one JS number type: a whole-number Decimal
    # (116.0) arrives as 116. Fractions arrive as Decimal, never float.
    assert egfr["value"] == 116 and egfr["derived"] is False
    assert isinstance(common["Default ULN"][2]["low"], Decimal)  # 25.8 (a fraction: Decimal)
    assert isinstance(egfr["evidence"][0]["date"], CqlDateTime)
    assert result.at == "2026-11-26T09:00:00.000Z"


def test_evaluate_trials_gives_a_verdict_per_trial(adult: dict) -> None:
    results = cds.evaluate_trials(adult, EVAL_AT)
    assert {r.researchStudy for r in results} == TRIALS
    verdicts = {r.researchStudy: r.verdict for r in results}
    assert verdicts["zju-children-cd19-cart-sle"] == "excluded"  # an adult in the children's trial
    assert verdicts["nct06350110"] == "likely-eligible"


def test_cli_evaluate_json_follows_the_design_contract() -> None:
    out = CliRunner().invoke(app, ["evaluate", str(ADULT), "--at", "2026-11-26T09:00:00Z", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert {d["researchStudy"] for d in doc} == TRIALS
    for trial in doc:
        assert set(trial) == {"researchStudy", "verdict", "criteria"}
        assert trial["verdict"] in {"excluded", "likely-eligible", "possibly-eligible"}
        for c in trial["criteria"]:
            assert set(c) == {"id", "type", "text", "status", "evidence", "missing"}
            assert c["type"] in {"inclusion", "exclusion", "review"}
            assert c["status"] in {"met", "not-met", "unknown"}
            for e in c["evidence"]:
                assert set(e) == {"reference", "value", "unit", "date", "note"}
            for m in c["missing"]:
                assert {"system", "code"} <= set(m)
    by_id = {d["researchStudy"]: d for d in doc}
    age = next(c for c in by_id["nct06350110"]["criteria"] if c["id"] == "004-I1")
    assert age["status"] == "met" and age["evidence"][0]["value"] == 29


def test_cli_evaluate_prints_a_table_by_default() -> None:
    out = CliRunner().invoke(app, ["evaluate", str(ADULT), "--at", "2026-11-26T09:00:00Z"])
    assert out.exit_code == 0, out.output
    assert "likely-eligible" in out.stdout and "004-I1" in out.stdout


@pytest.mark.parametrize("args,message", [
    (["evaluate", "no-such-file.json"], "no such file"),
    (["evaluate", str(ADULT), "--at", "yesterday"], "not an ISO date-time"),
])
def test_cli_evaluate_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2
    assert message in out.output
