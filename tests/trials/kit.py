"""Helpers for criterion tests: evaluate one trial library for a hand-made record."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from cds.engine import Engine
from cds.synthetic import fhir as F


def evaluate_trial(engine: Engine, trial_id: str, resources: Iterable[dict[str, Any]], at: datetime) -> dict[str, Any]:
    """Every define of the trial's library (raw engine JSON) for a record of `resources`."""
    return engine.evaluate(F.bundle(list(resources)), [trial_id], at).raw[trial_id]


def criterion(engine: Engine, trial_id: str, define: str, resources: Iterable[dict[str, Any]], at: datetime) -> dict[str, Any]:
    """One criterion's result tuple: {"status", "evidence": [...], "missing": [...]}."""
    result = evaluate_trial(engine, trial_id, resources, at)[define]
    assert isinstance(result, dict) and {"status", "evidence", "missing"} <= set(result), result
    return result


def missing_codes(result: dict[str, Any]) -> set[str]:
    return {m["code"] for m in result["missing"]}


def day(ev: dict[str, Any]) -> str | None:
    """The evidence date as YYYY-MM-DD (None when the evidence has no date)."""
    d = ev.get("date")
    return None if d is None else d["value"][:10]


def notes(result: dict[str, Any]) -> str:
    """Every evidence note of a criterion result, joined."""
    return " | ".join(e["note"] or "" for e in result["evidence"])


def ev_for(result: dict[str, Any], reference: str) -> dict[str, Any]:
    """The first evidence item about `reference` (asserts there is one)."""
    found = [e for e in result["evidence"] if e["reference"] == reference]
    assert found, (reference, result["evidence"])
    return found[0]
