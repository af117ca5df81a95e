"""Small builders for FHIR R4 resources as plain JSON dicts.

Why hand-rolled dicts and not fhir.resources models here: test patients must be able to
carry the odd shapes real EHRs send (a quantity with a comparator, a string result, a
missing status) that a validating model would refuse to build. The generated bundles are
still validated with fhir.resources by the tests, so the normal shapes stay honest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .codes import SYSTEMS, display_for

_counter = itertools.count(1)

Resource = dict[str, Any]


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


def reset_ids() -> None:
    """Restart generated ids (so a generator gives the same ids on every run)."""
    global _counter
    _counter = itertools.count(1)


def iso(moment: datetime | date) -> str:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return moment.isoformat()


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    uri = SYSTEMS.get(system, system)
    out = {"system": uri, "code": code}
    shown = display or display_for(uri, code)
    if shown:
        out["display"] = shown
    return out


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


def patient(pid: str, birth_date: date | None, gender: str | None, name: str = "Test") -> Resource:
    res: Resource = {"resourceType": "Patient", "id": pid, "name": [{"family": name, "given": ["Synthetic"]}]}
    if birth_date is not None:
        res["birthDate"] = birth_date.isoformat()
    if gender is not None:
        res["gender"] = gender
    return res


def observation(
    pid: str,
    system: str,
    code: str,
    when: datetime | date | None,
    *,
    value: float | int | None = None,
    unit: str | None = None,
    comparator: str | None = None,
    ref_high: float | None = None,
    ref_unit: str | None = None,
    value_code: tuple[str, str] | None = None,
    value_string: str | None = None,
    value_boolean: bool | None = None,
    interpretation: str | None = None,
    status: str = "final",
    category: str = "laboratory",
    rid: str | None = None,
    components: Iterable[Mapping[str, Any]] = (),
) -> Resource:
    res: Resource = {
        "resourceType": "Observation",
        "id": rid or _id("obs"),
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": concept(system, code),
        "subject": {"reference": f"Patient/{pid}"},
    }
    if when is not None:
        res["effectiveDateTime"] = iso(when)
    if value is not None:
        q: dict[str, Any] = {"value": value}
        if comparator:
            q["comparator"] = comparator
        if unit is not None:
            q.update({"unit": unit, "system": "http://unitsofmeasure.org", "code": unit})
        res["valueQuantity"] = q
    if value_code is not None:
        res["valueCodeableConcept"] = concept(value_code[0], value_code[1])
    if value_string is not None:
        res["valueString"] = value_string
    if value_boolean is not None:
        res["valueBoolean"] = value_boolean
    if interpretation:
        res["interpretation"] = [concept("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", interpretation)]
    if ref_high is not None:
        unit_ = ref_unit or unit
        res["referenceRange"] = [{"high": {"value": ref_high, "unit": unit_, "system": "http://unitsofmeasure.org", "code": unit_}}]
    if components:
        res["component"] = list(components)
    return res


def condition(
    pid: str,
    system: str,
    code: str,
    onset: datetime | date | None,
    *,
    clinical_status: str | None = "active",
    verification: str | None = "confirmed",
    rid: str | None = None,
    text: str | None = None,
) -> Resource:
    res: Resource = {
        "resourceType": "Condition",
        "id": rid or _id("cond"),
        "code": concept(system, code, text=text),
        "subject": {"reference": f"Patient/{pid}"},
    }
    if clinical_status:
        res["clinicalStatus"] = concept("http://terminology.hl7.org/CodeSystem/condition-clinical", clinical_status)
    if verification:
        res["verificationStatus"] = concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification)
    if onset is not None:
        res["onsetDateTime"] = iso(onset)
        res["recordedDate"] = iso(onset)
    return res


def procedure(pid: str, system: str, code: str, when: datetime | date | None, *, status: str = "completed",
              rid: str | None = None) -> Resource:
    res: Resource = {
        "resourceType": "Procedure",
        "id": rid or _id("proc"),
        "status": status,
        "code": concept(system, code),
        "subject": {"reference": f"Patient/{pid}"},
    }
    if when is not None:
        res["performedDateTime"] = iso(when)
    return res


def _dosage(dose_mg: float | None, per_day: int) -> list[dict[str, Any]]:
    if dose_mg is None:
        return []
    return [{
        "timing": {"repeat": {"frequency": per_day, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": {"value": dose_mg, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}],
    }]


def _period(start: datetime | date, end: datetime | date | None) -> dict[str, str]:
    """A FHIR Period; no end means still going (or not known)."""
    return {"start": iso(start), **({"end": iso(end)} if end is not None else {})}


def medication_request(
    pid: str,
    rxnorm: str,
    start: datetime | date,
    end: datetime | date | None,
    *,
    dose_mg: float | None = None,
    per_day: int = 1,
    status: str = "active",
    system: str = "RxNorm",
    rid: str | None = None,
) -> Resource:
    dosage = _dosage(dose_mg, per_day) or [{"timing": {"repeat": {}}}]
    dosage[0]["timing"]["repeat"]["boundsPeriod"] = _period(start, end)
    return {
        "resourceType": "MedicationRequest",
        "id": rid or _id("medrx"),
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": concept(system, rxnorm),
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": iso(start),
        "dosageInstruction": dosage,
    }


def medication_statement(
    pid: str,
    rxnorm: str,
    start: datetime | date,
    end: datetime | date | None,
    *,
    dose_mg: float | None = None,
    per_day: int = 1,
    status: str = "completed",
    system: str = "RxNorm",
    rid: str | None = None,
) -> Resource:
    res: Resource = {
        "resourceType": "MedicationStatement",
        "id": rid or _id("medst"),
        "status": status,
        "medicationCodeableConcept": concept(system, rxnorm),
        "subject": {"reference": f"Patient/{pid}"},
        "effectivePeriod": _period(start, end),
    }
    dosage = _dosage(dose_mg, per_day)
    if dosage:
        res["dosage"] = dosage
    return res


def immunization(pid: str, cvx: str, when: datetime | date | None, *, status: str = "completed",
                 rid: str | None = None) -> Resource:
    res: Resource = {
        "resourceType": "Immunization",
        "id": rid or _id("imm"),
        "status": status,
        "vaccineCode": concept("CVX", cvx),
        "patient": {"reference": f"Patient/{pid}"},
    }
    if when is not None:
        res["occurrenceDateTime"] = iso(when)
    return res


def bundle(resources: Iterable[Resource], *, bid: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "collection",
                           "entry": [{"fullUrl": f"urn:uuid:{r['resourceType'].lower()}-{r['id']}", "resource": r}
                                     for r in resources]}
    if bid:
        out["id"] = bid
    return out


def days_before(at: datetime, days: float) -> datetime:
    return at - timedelta(days=days)
