"""Criterion results -> a verdict per trial (DESIGN, "Eligibility semantics").

Python decides nothing about a criterion: status, evidence and missing codes all come from
the CQL. This module only reads them into typed results and applies the verdict rule:
excluded when an inclusion is not met or an exclusion is met; likely eligible when every
data-decidable inclusion is met and every exclusion is not met; possibly eligible otherwise.
Review-only criteria are carried along and never decide.

Parts of a data-decided criterion that need judgement (an ECG read, contraception agreed)
come out of the CQL as evidence whose reference is `confirm:<part>` (SLECommon "Confirm");
they become entries of their own, type "review", status "unknown", id `<criterion id>.<part>`,
right after their criterion (DESIGN's card extension), so `evaluate --json` and the card carry
the same "to confirm" items. They never decide a verdict.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..catalogue import Catalogue, CriterionDef, TrialDef
from ..engine import Engine
from .models import Coding, CriterionResult, Evidence, TrialResult, Verdict

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
CONFIRM_PREFIX = "confirm:"
_STATUSES = {"met", "not-met", "unknown"}


def _value(raw: Any) -> float | int | str | None:
    """Evidence values arrive as text from CQL; plain numbers become JSON numbers."""
    if raw is None or (isinstance(raw, (int, float)) and not isinstance(raw, bool)):
        return raw
    text = str(raw)
    if _NUMBER.match(text):
        return int(text) if "." not in text else float(text)
    return text


def _date(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        raw = raw.get("value")
    return None if raw is None else str(raw)


def _evidence(raw: Any) -> Evidence | None:
    if not isinstance(raw, Mapping):
        return None
    return Evidence(
        reference=raw.get("reference"),
        value=_value(raw.get("value")),
        unit=raw.get("unit"),
        date=_date(raw.get("date")),
        note=raw.get("note"),
    )


def _coding(raw: Any) -> Coding | None:
    if not isinstance(raw, Mapping) or not raw.get("code"):
        return None
    return Coding(system=raw.get("system"), code=str(raw["code"]), display=raw.get("display"))


def criterion_result(defn: CriterionDef, raw: Any) -> CriterionResult:
    """One criterion from its define's raw engine value; a malformed value reads as unknown."""
    if not isinstance(raw, Mapping) or raw.get("status") not in _STATUSES:
        return CriterionResult(id=defn.id, type=defn.kind, text=defn.text, status="unknown",
                               evidence=[Evidence(note=f"rule {defn.define!r} gave no result")])
    evidence = [e for e in (_evidence(x) for x in raw.get("evidence") or []) if e is not None]
    missing: list[Coding] = []
    for m in raw.get("missing") or []:
        c = _coding(m)
        if c is not None and c not in missing:
            missing.append(c)
    return CriterionResult(id=defn.id, type=defn.kind, text=defn.text, status=raw["status"],
                           evidence=evidence, missing=missing)


def decide(criteria: Sequence[CriterionResult]) -> Verdict:
    inclusions = [c for c in criteria if c.type == "inclusion"]
    exclusions = [c for c in criteria if c.type == "exclusion"]
    if any(c.status == "not-met" for c in inclusions) or any(c.status == "met" for c in exclusions):
        return "excluded"
    if all(c.status == "met" for c in inclusions) and all(c.status == "not-met" for c in exclusions):
        return "likely-eligible"
    return "possibly-eligible"


def split_confirm_parts(result: CriterionResult) -> list[CriterionResult]:
    """The criterion without its `confirm:` evidence, followed by one review entry per part."""
    parts = [e for e in result.evidence if (e.reference or "").startswith(CONFIRM_PREFIX)]
    if not parts:
        return [result]
    kept = [e for e in result.evidence if e not in parts]
    out = [result.model_copy(update={"evidence": kept})]
    seen: set[str] = set()
    for e in parts:
        part = (e.reference or "")[len(CONFIRM_PREFIX):].strip() or "review"
        if part in seen:
            continue
        seen.add(part)
        out.append(CriterionResult(id=f"{result.id}.{part}", type="review", text=str(e.value or part),
                                   status="unknown", evidence=[], missing=[]))
    return out


def trial_result(trial: TrialDef, defines: Mapping[str, Any]) -> TrialResult:
    criteria = [part for c in trial.criteria for part in split_confirm_parts(criterion_result(c, defines.get(c.define)))]
    return TrialResult(researchStudy=trial.id, verdict=decide(criteria), criteria=criteria)


def evaluate_trials(
    engine: Engine,
    catalogue: Catalogue,
    bundle: Mapping[str, Any],
    at: datetime | str,
    *,
    trials: Iterable[TrialDef] | None = None,
    timeout: float | None = None,
) -> list[TrialResult]:
    """Every trial's verdict for one patient record, in catalogue order (one engine call)."""
    chosen = list(trials if trials is not None else catalogue.trials)
    if not chosen:
        return []
    result = engine.evaluate(bundle, [t.library for t in chosen], at, timeout=timeout,
                             defines={t.library: [c.define for c in t.criteria] for t in chosen})
    return [trial_result(t, result.raw.get(t.library, {})) for t in chosen]
