"""Trial verdicts -> CDS Hooks cards a clinician reads in five seconds.

One card per likely/possibly eligible trial, likely first. The card says only what a clinician
acts on: the verdict, the trial by its short title and registry id, and the one fact that
matters most (summary, < 140 characters); then at most about ten lines of detail in clinical
words: the deciding values (value, unit, date), the tests missing or out of date by name, what
the record could not classify, what to confirm with the patient or investigator. The whole
checklist, criterion by criterion with all its evidence, is the clinician view's job (the
card's `smart` link); the machine-readable result rides in `card.extension["trial-cds"]`
(DESIGN contract), unchanged, so EHRs and tests never parse the markdown.

Every piece of record or catalogue text goes into the markdown through `cds.markdown.text`,
so a lab's free text or a code display can never inject emphasis, links or HTML.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import display as D
from . import markdown as M
from .catalogue import TrialDef
from .eligibility import Coding, CriterionResult, Evidence, TrialResult
from .hooks.models import Action, Card, Link, Source, Suggestion
from .hooks.models import Coding as HookCoding

TRIALS_SYSTEM = "https://trial-cds.dev/trials"
OVERRIDE_SYSTEM = "https://trial-cds.dev/override-reasons"
CARD_NAMESPACE = uuid.UUID("5b7f3a52-8c1e-4f5e-9d1b-2b4a6e0c9a11")
RESEARCH_STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
SUMMARY_LIMIT = 139  # CDS Hooks: summary "<140 characters"
LINE_LIMIT = 220  # characters of one detail line, so a line wraps at most twice in a card column
VALUES_SHOWN = 4  # deciding values on the card; the rest are in the clinician view

OVERRIDE_REASONS = [
    HookCoding(system=OVERRIDE_SYSTEM, code="patient-declined", display="Patient declined"),
    HookCoding(system=OVERRIDE_SYSTEM, code="not-a-candidate", display="Not a candidate (clinical judgement)"),
    HookCoding(system=OVERRIDE_SYSTEM, code="already-screened", display="Already screened or referred"),
    HookCoding(system=OVERRIDE_SYSTEM, code="data-out-of-date", display="Record data out of date or wrong"),
]

VERDICT_LABEL = {"likely-eligible": "Likely eligible", "possibly-eligible": "Possibly eligible"}
_STATUS_WORD = re.compile(r"(?:^|(?<=; ))[^;:]{1,80}: (?:met|not-met|unknown)(?:; |$)")
_ASSUMED_LIMIT = re.compile(r"assumed (?:ULN|upper limit|reference range)", re.IGNORECASE)
_REVIEW_PREFIX = re.compile(r"^\s*clinician review:\s*", re.IGNORECASE)


def card_uuid(hook_instance: str, trial_id: str, salt: str = "card") -> str:
    """Stable per hookInstance + trial, so feedback can name the card."""
    return str(uuid.uuid5(CARD_NAMESPACE, f"{salt}:{hook_instance}:{trial_id}"))


# -- reading the results in clinical words -------------------------------------------------------

def clinical_note(note: str | None) -> str:
    """An evidence note without the engine's bookkeeping ("HBV: unknown; HBsAg: unknown; no result" -> "no result")."""
    if not note:
        return ""
    text = _STATUS_WORD.sub("", note).strip().strip(";").strip()
    text = _REVIEW_PREFIX.sub("", text)
    text = re.sub(r"\bcompared ", "threshold ", text)
    text = text.replace(">=", "≥").replace("<=", "≤")
    text = re.sub(r"\s*\{[^}]*\}", "", text)  # UCUM annotations: "> 6 {score}" -> "> 6"
    text = text.replace("mL/min/1.73 m2", "mL/min/1.73 m²")
    return text


def _is(e: Evidence, word: str) -> bool:
    return word in (e.note or "").lower()


@dataclass
class Reading:
    """What the card (and the clinician view) says about one trial result."""

    decided: list[CriterionResult]
    review: list[CriterionResult]
    values: list[str] = field(default_factory=list)  # deciding values, "SLEDAI-2K 12 (12 Nov 2026)"
    to_order: list[Coding] = field(default_factory=list)
    order_names: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)  # unknown, with neither a test to order nor a stale value
    flags: list[str] = field(default_factory=list)  # assumed limits, derived values
    confirm: list[str] = field(default_factory=list)


class Labeller:
    """Names a piece of evidence: the test of the resource it points at, else the criterion's measure."""

    def __init__(self, record: Mapping[str, Any] | None) -> None:
        self._by_ref: dict[str, Mapping[str, Any]] = {}
        for entry in (record or {}).get("entry") or []:
            res = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(res, Mapping) and res.get("resourceType") and res.get("id"):
                self._by_ref[f"{res['resourceType']}/{res['id']}"] = res

    def name(self, e: Evidence, criterion: CriterionResult, measure: Sequence[tuple[str, str, str | None]] = ()) -> str:
        res = self._by_ref.get(e.reference or "")
        if res is not None:
            rtype = res.get("resourceType")
            if rtype == "Patient":
                return "age"
            concept = res.get("code") or res.get("medicationCodeableConcept") or res.get("vaccineCode")
            name = D.codeable_name(concept)
            if name:
                return name
        for system, code, disp in measure:
            return D.test_name(system, code, disp)
        if e.reference and e.reference.startswith("Patient/"):
            return "age"
        head = (e.note or "").split(":", 1)[0].strip()
        return head if head and len(head) <= 40 and head.lower() != "clinician review" else ""


def _value_text(e: Evidence) -> str:
    if e.value is None or e.value == "":
        return ""
    if e.unit == "a":
        return f"{D.number(e.value)} years"
    return D.quantity(e.value, e.unit)


def _fact(name: str, e: Evidence) -> str:
    value = _value_text(e)
    when = D.day(e.date)
    text = f"{name} {value}".strip() if name != "age" else f"age {D.number(e.value)}"
    return f"{text} ({when})" if when and name != "age" else text


def read_result(trial: TrialDef, result: TrialResult, orderable: set[tuple[str, str]],
                record: Mapping[str, Any] | None = None) -> Reading:
    """Turn a trial's criterion results into the few facts a clinician needs (no engine wording)."""
    measures = {c.id: c.measure for c in trial.criteria}
    label = Labeller(record)
    decided = [c for c in result.criteria if c.type != "review"]
    review = [c for c in result.criteria if c.type == "review"]
    r = Reading(decided=decided, review=review)
    seen_values: set[str] = set()
    for c in decided:
        if c.type != "inclusion" or c.status != "met":
            continue
        for e in c.evidence:
            if e.value is None or not e.date or not e.reference or e.reference.startswith("Patient/"):
                continue
            if isinstance(e.value, bool) or str(e.value).lower() in {"true", "false"}:
                continue  # a yes/no state (not in remission) is the criterion, not a value to show
            if not isinstance(e.value, (int, float)) and not e.reference.startswith("Observation/"):
                continue
            fact = _fact(label.name(e, c, measures.get(c.id, ())), e)
            key = fact.split(" (")[0]
            if key not in seen_values:
                seen_values.add(key)
                r.values.append(fact)
            break
    for c in decided:
        for e in c.evidence:
            if _is(e, "could not be classified"):
                item = str(e.value) if e.value not in (None, "") else clinical_note(e.note)
                if item and item not in r.unclassified:
                    r.unclassified.append(item)
            if _ASSUMED_LIMIT.search(e.note or ""):
                flag = f"{label.name(e, c, measures.get(c.id, ())) or c.id}: upper limit of normal assumed"
                if flag not in r.flags:
                    r.flags.append(flag)
            if _is(e, "derived"):
                head = re.split(r"\s[<>≤≥=]", (e.note or "").split(":", 1)[0].strip())[0]
                what = head if head and len(head) <= 40 and "derived" not in head.lower() else label.name(e, c)
                flag = f"{what} {_value_text(e)} {clinical_note(e.note)}".replace("  ", " ").strip()
                if not any(f.startswith(f"{what} ") for f in r.flags):
                    r.flags.append(flag)
        if c.status != "unknown":
            continue
        stale = [e for e in c.evidence if _is(e, "stale")]
        for e in stale:
            fact = _fact(label.name(e, c, measures.get(c.id, ())), e)
            if fact not in r.stale:
                r.stale.append(fact)
        ordered = False
        for m in c.missing:
            code_key = (m.system or "", m.code)
            if orderable and code_key not in orderable:
                continue
            ordered = True
            if m in r.to_order:
                continue
            r.to_order.append(m)
            name = D.test_name(m.system, m.code, m.display)
            if name not in r.order_names:
                r.order_names.append(name)
        if not ordered and not stale and not any(_is(e, "could not be classified") for e in c.evidence):
            why = next((clinical_note(e.note) for e in c.evidence if clinical_note(e.note)), "no data in the record")
            r.undecided.append(f"{M.shorten(c.text, 60)}: {why}")
    for c in review:
        note = next((clinical_note(e.note) for e in c.evidence if e.note), "") or c.text
        r.confirm.append(note)
    return r


# -- the card ------------------------------------------------------------------------------------

def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def key_fact(reading: Reading, verdict: str) -> str:
    """The one fact that matters most for acting on this card."""
    if verdict == "likely-eligible":
        fact = f"passes all {_count(len(reading.decided), 'criterion', 'criteria')} the record decides"
        return fact + (f", {len(reading.confirm)} to confirm" if reading.confirm else "")
    if reading.order_names:
        what = "missing or out of date" if reading.stale else "missing"
        return f"{_count(len(reading.order_names), 'test')} {what}"
    if reading.unclassified:
        return f"{_count(len(reading.unclassified), 'record')} to review"
    undecided = sum(c.status == "unknown" for c in reading.decided)
    return f"{_count(undecided, 'criterion', 'criteria')} undecided"


def summary(trial: TrialDef, result: TrialResult, reading: Reading | None = None) -> str:
    """"Possibly eligible: BCMA/CD70 CAR-T for refractory SLE (NCT07318259) — 3 tests missing" (< 140)."""
    label = VERDICT_LABEL[result.verdict]
    reg = f" ({trial.registry_id})" if trial.registry_id else ""
    fact = key_fact(reading, result.verdict) if reading is not None else ""
    for tail in ([f" — {fact}"] if fact else []) + [""]:
        text = f"{label}: {trial.name}{reg}{tail}"
        if len(text) <= SUMMARY_LIMIT:
            return text
    room = SUMMARY_LIMIT - len(f"{label}: {reg}")
    return f"{label}: {M.shorten(trial.name, room)}{reg}"


def _line(label: str, items: Sequence[str], sep: str = " · ") -> str:
    """One detail line: a bold label and as many items as fit, then "+N more" (items escaped)."""
    shown: list[str] = []
    length = len(label) + 6
    for i, item in enumerate(items):
        piece = M.shorten(item, 90)
        more = len(items) - i - 1
        if shown and length + len(piece) + len(sep) + (10 if more else 0) > LINE_LIMIT:
            break
        shown.append(piece)
        length += len(piece) + len(sep)
    rest = len(items) - len(shown)
    body = M.text(sep.join(shown)) + (f" {M.text(f'(+{rest} more)')}" if rest else "")
    return f"- **{M.text(label)}:** {body}"


def detail(trial: TrialDef, result: TrialResult, orderable: set[tuple[str, str]],
           record: Mapping[str, Any] | None = None, reading: Reading | None = None) -> str:
    r = reading or read_result(trial, result, orderable, record)
    lines: list[str] = []
    if result.verdict == "likely-eligible":
        lines.append(M.text(f"The record passes all {_count(len(r.decided), 'criterion', 'criteria')} it can decide; "
                            "nothing excludes the patient."))
    else:
        unknown = sum(c.status == "unknown" for c in r.decided)
        lines.append(M.text(f"Nothing in the record excludes the patient; {_count(unknown, 'criterion', 'criteria')} "
                            f"of {len(r.decided)} cannot be decided yet."))
    lines.append("")
    if r.values:
        lines.append(_line("Deciding values", r.values[:VALUES_SHOWN] + ([f"+{len(r.values) - VALUES_SHOWN} more"]
                                                                         if len(r.values) > VALUES_SHOWN else [])))
    if r.order_names:
        lines.append(_line("Missing, order to decide", r.order_names, ", "))
    if r.stale:
        lines.append(_line("Out of date", r.stale))
    if r.unclassified:
        lines.append(_line("Could not be classified, review", r.unclassified))
    if r.undecided:
        lines.append(_line("Not decided", r.undecided))
    if r.flags:
        lines.append(_line("Note", r.flags))
    if r.confirm:
        lines.append(_line("To confirm", [M.shorten(c, 50) for c in r.confirm]))
    lines += ["", M.text(f"Whole checklist ({len(result.criteria)} criteria, with evidence) in the trial-cds view. "
                         "Screening aid: the trial team decides eligibility.")]
    return "\n".join(lines)


def _coding(code: Coding) -> dict[str, str]:
    return {k: v for k, v in {"system": code.system, "code": code.code, "display": code.display}.items() if v}


def order_request(trial: TrialDef, patient_id: str, code: Coding) -> dict[str, Any]:
    """A proposed order (ServiceRequest, draft proposal) for one missing test, tied to the trial."""
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"coding": [_coding(code)], "text": D.test_name(code.system, code.code, code.display)},
        "subject": {"reference": f"Patient/{patient_id}"},
        "reasonCode": [{"text": f"Eligibility screening for clinical trial {trial.registry_id or trial.name}"}],
        "extension": [{"url": RESEARCH_STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{trial.id}"}}],
    }


def referral_request(trial: TrialDef, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"text": f"Referral for clinical trial screening: {trial.name}"
                         + (f" ({trial.registry_id})" if trial.registry_id else "")},
        "subject": {"reference": f"Patient/{patient_id}"},
        "reasonCode": [{"text": trial.title}],
        "extension": [{"url": RESEARCH_STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{trial.id}"}}],
    }


def _orders_suggestion(trial: TrialDef, patient_id: str, reading: Reading, hook_instance: str) -> Suggestion:
    names = reading.order_names
    label = M.shorten(f"Order the missing tests: {', '.join(names)}", 80)
    return Suggestion(
        label=label if len(names) > 1 else f"Order {names[0]}"[:80],
        uuid=card_uuid(hook_instance, trial.id, "orders"),
        actions=[Action(type="create", description=f"Propose {D.test_name(m.system, m.code, m.display)} to decide "
                                                   f"eligibility for {trial.registry_id or trial.name}",
                        resource=order_request(trial, patient_id, m))
                 for m in reading.to_order],
    )


def _referral_suggestion(trial: TrialDef, patient_id: str, hook_instance: str, recommended: bool) -> Suggestion:
    return Suggestion(
        label=f"Refer for trial screening ({trial.registry_id})" if trial.registry_id else "Refer for trial screening",
        uuid=card_uuid(hook_instance, trial.id, "referral"),
        isRecommended=recommended,
        actions=[Action(type="create", description=f"Propose a referral to {trial.title}",
                        resource=referral_request(trial, patient_id))],
    )


def build_card(trial: TrialDef, result: TrialResult, patient_id: str, hook_instance: str,
               orderable: set[tuple[str, str]], record: Mapping[str, Any] | None = None,
               app_url: str | None = None) -> Card:
    """One card. `record` (the evaluated Bundle) names evidence by its test; `app_url` adds the
    clinician view's `smart` link, whose appContext is the card's uuid: an opaque id, no patient data."""
    reading = read_result(trial, result, orderable, record)
    card_id = card_uuid(hook_instance, trial.id)
    suggestions = [_referral_suggestion(trial, patient_id, hook_instance, result.verdict == "likely-eligible")]
    if reading.to_order:
        suggestions.append(_orders_suggestion(trial, patient_id, reading, hook_instance))
    links = []
    if trial.page:
        links.append(Link(label=f"{trial.registry_id} on ClinicalTrials.gov" if trial.nct else "Trial page",
                          url=trial.page, type="absolute"))
    if app_url:
        links.append(Link(label="Whole checklist (trial-cds view)", url=app_url, type="smart", appContext=card_id))
    return Card(
        uuid=card_id,
        summary=summary(trial, result, reading),
        detail=detail(trial, result, orderable, record, reading),
        indicator="info",
        source=Source(label=f"trial-cds: {trial.registry_id}" if trial.registry_id else "trial-cds", url=trial.page,
                      topic=HookCoding(system=TRIALS_SYSTEM, code=trial.id, display=trial.title[:200])),
        suggestions=suggestions,
        selectionBehavior="any",
        overrideReasons=OVERRIDE_REASONS,
        links=links or None,
        extension={"trial-cds": result.model_dump(mode="json")},
    )


def rank(results: Iterable[TrialResult]) -> list[TrialResult]:
    """Trials the patient may join, likely first, then by how few criteria are undecided."""
    return sorted((r for r in results if r.verdict != "excluded"),
                  key=lambda r: (0 if r.verdict == "likely-eligible" else 1,
                                 sum(c.status == "unknown" for c in r.criteria if c.type != "review")))


def build_cards(trials: Sequence[TrialDef], results: Sequence[TrialResult], patient_id: str, hook_instance: str,
                orderable: set[tuple[str, str]], record: Mapping[str, Any] | None = None,
                app_url: str | None = None) -> list[Card]:
    by_id = {t.id: t for t in trials}
    return [build_card(by_id[r.researchStudy], r, patient_id, hook_instance, orderable, record, app_url)
            for r in rank(results)]
