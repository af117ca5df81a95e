"""What the clinician view shows per trial, from the evaluation and the record the app read.

The same reading as the card (cds.cards.read_result: clinical words, test names, units), but
whole: every criterion with the seed's full text, its status (met / not met / unknown / to
confirm), its evidence with dates and flags, the series of the values that decide (with the
trial's threshold from the eligibility Group), the orders to propose and the referral. Plain
JSON for the browser; the `trial-cds` criterion shape (DESIGN) rides along unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .. import display as D
from ..cards import (
    Labeller,
    clinical_note,
    key_fact,
    order_request,
    rank,
    read_result,
    referral_request,
    summary,
)
from ..catalogue import CriterionDef, TrialDef
from ..eligibility import CriterionResult, Evidence, TrialResult

FLAG_WORDS = {
    "stale": "out of date",
    "assumed uln": "assumed upper limit",
    "assumed upper limit": "assumed upper limit",
    "derived": "derived",
    "could not be classified": "could not be classified",
}
QUANTITY_KEYS = {"valueQuantity", "valueRange"}


def _flags(e: Evidence) -> list[str]:
    note = (e.note or "").lower()
    out: list[str] = []
    for word, flag in FLAG_WORDS.items():
        if word in note and flag not in out:
            out.append(flag)
    return out


def _evidence(e: Evidence, c: CriterionResult, defn: CriterionDef | None, label: Labeller) -> dict[str, Any]:
    value = "" if e.value in (None, "") else (f"{D.number(e.value)} years" if e.unit == "a" else D.quantity(e.value, e.unit))
    name = label.name(e, c, defn.measure if defn else ())
    if value and value.lower() == name.lower():
        value = ""  # "Systemic lupus erythematosus: Systemic lupus erythematosus" says it once
    return {"label": name, "value": value, "date": D.day(e.date),
            "isoDate": e.date, "note": clinical_note(e.note), "flags": _flags(e), "reference": e.reference}


def _threshold(defn: CriterionDef) -> dict[str, Any] | None:
    t = defn.threshold or {}
    if "valueQuantity" in t:
        q = t["valueQuantity"]
        return {"comparator": q.get("comparator"), "value": q.get("value"), "unit": q.get("code") or q.get("unit"),
                "text": f"{q.get('comparator', '')} {D.quantity(q.get('value'), q.get('code') or q.get('unit'))}".strip()}
    if "valueRange" in t:
        lo, hi = t["valueRange"].get("low") or {}, t["valueRange"].get("high") or {}
        unit = lo.get("code") or hi.get("code")
        return {"low": lo.get("value"), "high": hi.get("value"), "unit": unit,
                "text": f"{D.number(lo.get('value', '…'))} to {D.quantity(hi.get('value', '…'), unit)}"}
    return None


def _observations(record: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    return [e["resource"] for e in (record or {}).get("entry") or []
            if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
            and e["resource"].get("resourceType") == "Observation"]


def _series(defn: CriterionDef, observations: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The values over time of what a criterion measures (same test name as its measured code)."""
    threshold = _threshold(defn)
    if not defn.measure or threshold is None or threshold.get("unit") == "a":
        return None
    system, code, disp = defn.measure[0]
    name = D.test_name(system, code, disp)
    points = []
    for o in observations:
        codings = (o.get("code") or {}).get("coding") or []
        if not any((c.get("system"), c.get("code")) == (system, code)
                   or D.test_name(c.get("system"), str(c.get("code", "")), c.get("display")) == name for c in codings):
            continue
        q = o.get("valueQuantity") or {}
        when = o.get("effectiveDateTime") or (o.get("effectivePeriod") or {}).get("start") or o.get("issued")
        if isinstance(q.get("value"), (int, float)) and when:
            points.append({"date": str(when)[:10], "value": q["value"], "unit": q.get("code") or q.get("unit"),
                           "comparator": q.get("comparator")})
    if not points:
        return None
    points.sort(key=lambda p: p["date"])
    units = {p["unit"] for p in points}
    same_unit = units == {threshold.get("unit")} or (threshold.get("unit") in (None, "{score}") and len(units) == 1)
    return {"criterion": defn.id, "name": name, "unit": D.unit(points[-1]["unit"]), "points": points,
            "threshold": threshold if same_unit else None,
            "thresholdNote": None if same_unit else f"threshold {threshold['text']} (other unit: not drawn)"}


def trial_view(trial: TrialDef, result: TrialResult, orderable: set[tuple[str, str]], record: Mapping[str, Any] | None,
               patient_id: str, focused: bool) -> dict[str, Any]:
    defs = {c.id: c for c in trial.criteria}
    label = Labeller(record)
    reading = read_result(trial, result, orderable, record)
    observations = _observations(record)
    criteria: list[dict[str, Any]] = []
    timelines: list[dict[str, Any]] = []
    for c in result.criteria:
        base = c.id.split(".", 1)[0]
        defn = defs.get(c.id) or defs.get(base)
        criteria.append({
            "id": c.id, "type": c.type, "status": c.status, "text": c.text,
            "checklist": "to-confirm" if c.type == "review" else c.status,
            "evidence": [_evidence(e, c, defn, label) for e in c.evidence],
            "missing": list(dict.fromkeys(D.test_name(m.system, m.code, m.display) for m in c.missing)),
        })
        if defn is not None and c.type != "review" and defn.id == c.id:
            s = _series(defn, observations)
            if s and s["name"] not in {t["name"] for t in timelines}:
                timelines.append(s)
    return {
        "researchStudy": trial.id, "name": trial.name, "title": trial.title, "registryId": trial.registry_id,
        "page": trial.page, "verdict": result.verdict, "focused": focused,
        "summary": summary(trial, result, reading) if result.verdict != "excluded" else f"Excluded: {trial.name}",
        "keyFact": key_fact(reading, result.verdict) if result.verdict != "excluded" else "",
        "criteria": criteria, "timelines": timelines,
        "missingTests": reading.order_names, "stale": reading.stale, "toConfirm": reading.confirm,
        "orders": [order_request(trial, patient_id, m) for m in reading.to_order],
        "referral": referral_request(trial, patient_id),
    }


def evaluation_view(trials: Sequence[TrialDef], results: Sequence[TrialResult], orderable: set[tuple[str, str]],
                    record: Mapping[str, Any] | None, patient_id: str, focus: str | None) -> list[dict[str, Any]]:
    """Every trial: those the patient may join first (likely, then possibly), the excluded after."""
    by_id = {t.id: t for t in trials}
    ordered = rank(results) + [r for r in results if r.verdict == "excluded"]
    return [trial_view(by_id[r.researchStudy], r, orderable, record, patient_id, r.researchStudy == focus)
            for r in ordered if r.researchStudy in by_id]
