"""Trial verdicts -> CDS Hooks cards (one per likely/possibly eligible trial, likely first).

A card says why the patient may qualify, criterion by criterion with the evidence, what is
missing and how to get it (a ServiceRequest proposal per missing test), and links to the
trial. The machine-readable result rides in `card.extension["trial-cds"]` (DESIGN contract),
so EHRs and tests never parse the markdown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from .catalogue import TrialDef
from .eligibility import Coding, CriterionResult, TrialResult
from .hooks.models import Action, Card, Coding as HookCoding, Link, Source, Suggestion

TRIALS_SYSTEM = "https://trial-cds.dev/trials"
OVERRIDE_SYSTEM = "https://trial-cds.dev/override-reasons"
CARD_NAMESPACE = uuid.UUID("5b7f3a52-8c1e-4f5e-9d1b-2b4a6e0c9a11")
RESEARCH_STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"

OVERRIDE_REASONS = [
    HookCoding(system=OVERRIDE_SYSTEM, code="patient-declined", display="Patient declined"),
    HookCoding(system=OVERRIDE_SYSTEM, code="not-a-candidate", display="Not a candidate (clinical judgement)"),
    HookCoding(system=OVERRIDE_SYSTEM, code="already-screened", display="Already screened or referred"),
    HookCoding(system=OVERRIDE_SYSTEM, code="data-out-of-date", display="Record data out of date or wrong"),
]

VERDICT_LABEL = {"likely-eligible": "Likely eligible", "possibly-eligible": "Possibly eligible"}
STATUS_MARK = {"met": "met", "not-met": "not met", "unknown": "unknown"}


def card_uuid(hook_instance: str, trial_id: str, salt: str = "card") -> str:
    """Stable per hookInstance + trial, so feedback can name the card."""
    return str(uuid.uuid5(CARD_NAMESPACE, f"{salt}:{hook_instance}:{trial_id}"))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _evidence_line(c: CriterionResult) -> str:
    parts = []
    for e in c.evidence:
        value = " ".join(str(x) for x in (e.value, e.unit) if x not in (None, ""))
        when = f" ({e.date[:10]})" if e.date else ""
        note = e.note or ""
        text = f"{value}{when}" if value else ""
        if note:
            text = f"{text}: {note}" if text else note
        if text:
            parts.append(text)
    return "; ".join(parts) or "–"


def _flags(c: CriterionResult) -> str:
    notes = " ".join((e.note or "").lower() for e in c.evidence)
    flags = [f for f in ("stale", "assumed", "derived") if f in notes]
    return ", ".join(flags)


def summary(trial: TrialDef, result: TrialResult) -> str:
    label = VERDICT_LABEL[result.verdict]
    name = trial.nct or trial.id
    text = f"{label}: {name} {trial.title}"
    return text if len(text) < 140 else text[:136].rstrip() + "…"


def detail(trial: TrialDef, result: TrialResult, orderable: set[tuple[str, str]]) -> str:
    decided = [c for c in result.criteria if c.type != "review"]
    unknown = [c for c in decided if c.status == "unknown"]
    lines = [f"**{trial.title}**", ""]
    if result.verdict == "likely-eligible":
        lines.append("Every inclusion criterion the record can decide is met and no exclusion applies.")
    else:
        lines.append(f"No criterion excludes the patient, but {len(unknown)} cannot be decided from the record.")
    lines += ["", "| Criterion | Type | Status | Evidence | Flags |", "|---|---|---|---|---|"]
    for c in decided:
        lines.append(f"| {_cell(c.id)}: {_cell(c.text[:90])} | {c.type} | {STATUS_MARK[c.status]} | {_cell(_evidence_line(c))} | {_flags(c)} |")
    missing = _missing_tests(result.criteria, orderable)
    if missing:
        lines += ["", "**Missing or stale data** (order to decide):"]
        lines += [f"- {m.display or m.code} ({m.system}|{m.code})" for m in missing]
    review = [c for c in result.criteria if c.type == "review"]
    if review:
        lines += ["", "**To confirm with the patient or investigator:**"]
        lines += [f"- {c.id}: {_cell(c.text[:160])}" for c in review]
    lines += ["", "_Screening aid only: eligibility is decided by the trial investigators._"]
    return "\n".join(lines)


def _missing_tests(criteria: Iterable[CriterionResult], orderable: set[tuple[str, str]]) -> list[Coding]:
    """Missing codes worth ordering: the first code of each catalogue code list, deduplicated."""
    out: list[Coding] = []
    seen = set()
    for c in criteria:
        if c.status != "unknown" or c.type == "review":
            continue
        for m in c.missing:
            key = (m.system or "", m.code)
            if key in seen or (orderable and key not in orderable):
                continue
            seen.add(key)
            out.append(m)
    return out


def _order_suggestion(trial: TrialDef, patient_id: str, code: Coding, hook_instance: str) -> Suggestion:
    resource = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"coding": [{k: v for k, v in {"system": code.system, "code": code.code, "display": code.display}.items() if v}],
                 "text": code.display or code.code},
        "subject": {"reference": f"Patient/{patient_id}"},
        "reasonCode": [{"text": f"Eligibility screening for clinical trial {trial.nct or trial.id}"}],
        "extension": [{"url": RESEARCH_STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{trial.id}"}}],
    }
    return Suggestion(
        label=f"Order {code.display or code.code}"[:120],
        uuid=card_uuid(hook_instance, trial.id, f"order:{code.system}|{code.code}"),
        actions=[Action(type="create", description=f"Propose {code.display or code.code} to decide eligibility for {trial.nct or trial.id}", resource=resource)],
    )


def _referral_suggestion(trial: TrialDef, patient_id: str, hook_instance: str, recommended: bool) -> Suggestion:
    resource = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"text": f"Referral for clinical trial screening: {trial.nct or trial.id}"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "reasonCode": [{"text": trial.title}],
        "extension": [{"url": RESEARCH_STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{trial.id}"}}],
    }
    return Suggestion(
        label=f"Refer to trial {trial.nct or trial.id}",
        uuid=card_uuid(hook_instance, trial.id, "referral"),
        isRecommended=recommended,
        actions=[Action(type="create", description=f"Propose a referral to {trial.title}", resource=resource)],
    )


def build_card(trial: TrialDef, result: TrialResult, patient_id: str, hook_instance: str,
               orderable: set[tuple[str, str]]) -> Card:
    suggestions = [_referral_suggestion(trial, patient_id, hook_instance, result.verdict == "likely-eligible")]
    suggestions += [_order_suggestion(trial, patient_id, m, hook_instance)
                    for m in _missing_tests(result.criteria, orderable)]
    links = []
    if trial.page:
        links.append(Link(label="ClinicalTrials.gov record" if trial.nct else "Trial page", url=trial.page, type="absolute"))
    return Card(
        uuid=card_uuid(hook_instance, trial.id),
        summary=summary(trial, result),
        detail=detail(trial, result, orderable),
        indicator="info",
        source=Source(label=f"trial-cds: {trial.nct or trial.id}", url=trial.page,
                      topic=HookCoding(system=TRIALS_SYSTEM, code=trial.id, display=trial.title[:200])),
        suggestions=suggestions,
        selectionBehavior="any",
        overrideReasons=OVERRIDE_REASONS,
        links=links or None,
        extension={"trial-cds": result.model_dump(mode="json")},
    )


def build_cards(trials: Sequence[TrialDef], results: Sequence[TrialResult], patient_id: str, hook_instance: str,
                orderable: set[tuple[str, str]]) -> list[Card]:
    by_id = {t.id: t for t in trials}
    ranked = sorted((r for r in results if r.verdict != "excluded"),
                    key=lambda r: (0 if r.verdict == "likely-eligible" else 1,
                                   sum(c.status == "unknown" for c in r.criteria if c.type != "review")))
    return [build_card(by_id[r.researchStudy], r, patient_id, hook_instance, orderable) for r in ranked]
