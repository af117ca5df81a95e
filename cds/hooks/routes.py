"""The CDS Hooks 2.0 endpoints: discovery, the patient-view service, card feedback."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from ..state import State
from ..web.body import json_body
from ..web.deps import ClientAuth, StateDep
from ..web.errors import ApiError, error_responses, json_request
from .models import CardsResponse, Discovery, FeedbackRequest, HookRequest, PatientViewContext, Service
from .patient_view import HookOutcome, audit_cards, run_hook
from .prefetch import prefetch_templates

log = logging.getLogger("trial_cds")

SERVICE_ID = "sle-car-t-trials"
DISCOVERY_PATH = "/cds-services"
HOOK_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"

router = APIRouter(tags=["cds-hooks"])


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def server_timing(timings: dict[str, float]) -> str:
    """Server-Timing (W3C): where the time of a call went, for EHR-side tracing and bench/hook.py."""
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items())


def service_description(state: State) -> Service:
    trials = ", ".join(t.nct or t.id for t in state.catalogue.trials)
    return Service(
        hook="patient-view",
        id=SERVICE_ID,
        title="Clinical trials this patient may join (SLE CAR-T)",
        description=("Checks the patient's record against the eligibility criteria of "
                     f"{len(state.catalogue.trials)} recruiting trials ({trials}) and shows one card per trial the "
                     "patient may qualify for, with the evidence for each criterion and the tests that are missing."),
        prefetch=prefetch_templates(state.queries) or None,
        usageRequirements=("Needs read access to the patient's Patient, Condition, Observation, MedicationRequest, "
                           "MedicationStatement, Procedure and Immunization resources (SMART scopes such as "
                           "user/Observation.read or patient/Observation.read), by prefetch or through fhirAuthorization."),
    )


@router.get(DISCOVERY_PATH, response_model=Discovery, response_model_exclude_none=True,
            dependencies=[Depends(ClientAuth(DISCOVERY_PATH))], responses=error_responses(401))
async def discovery(state: StateDep) -> Discovery:
    return Discovery(services=[service_description(state)])


@router.post(HOOK_PATH, response_model=CardsResponse, response_model_exclude_none=True,
             dependencies=[Depends(ClientAuth(HOOK_PATH))], openapi_extra=json_request(HookRequest),
             responses=error_responses(400, 401, 412, 413, 415, 503))
async def patient_view(request: Request, state: StateDep) -> Response:
    started = time.perf_counter()
    hook = await json_body(request, HookRequest, state.settings.max_body_bytes)
    outcome = HookOutcome(timings={"parse": _ms(started)})
    if hook.hook != "patient-view":
        raise ApiError(400, f"this service answers the patient-view hook, not {hook.hook[:64]!r}")
    try:
        context = PatientViewContext.model_validate(hook.context)
    except ValidationError as exc:
        raise ApiError(400, "context.patientId is required (a FHIR id)") from exc
    patient_id = context.patientId
    status = 200
    try:
        await asyncio.to_thread(_run, state, hook, patient_id, outcome)
        serialize_started = time.perf_counter()
        body = CardsResponse(cards=outcome.cards).model_dump_json(exclude_none=True).encode("utf-8")
        outcome.timings["serialize"] = _ms(serialize_started)
        outcome.timings["total"] = _ms(started)
        return Response(body, media_type="application/json", headers={"Server-Timing": server_timing(outcome.timings)})
    except ApiError as exc:
        status = exc.status
        raise
    except Exception:
        status = 503  # the generic handler answers 503; the audit must not say 200
        raise
    finally:
        try:  # off the event loop: the commit fsyncs (synchronous=FULL)
            await state.in_store_thread(
                state.store.record_hook, hook_instance=hook.hookInstance, patient_id=patient_id, status=status,
                verdicts=outcome.verdicts, latency_ms=_ms(started), data_source=outcome.source,
                cards=audit_cards(outcome.cards), dropped=outcome.dropped)
        except Exception:  # the answer must not be lost because the audit failed
            log.exception("audit write failed for a hook call")


def _run(state: State, hook: HookRequest, patient_id: str, outcome: HookOutcome) -> None:
    with state.using_rules() as rules:
        run_hook(rules, state.settings, hook, patient_id, outcome)


@router.post(FEEDBACK_PATH, dependencies=[Depends(ClientAuth(FEEDBACK_PATH))],
             openapi_extra=json_request(FeedbackRequest), responses=error_responses(400, 401, 413, 415))
async def feedback(request: Request, state: StateDep) -> dict[str, Any]:
    body = await json_body(request, FeedbackRequest, state.settings.max_body_bytes)
    items = [f.model_dump(mode="json", exclude_none=True) for f in body.feedback]
    stored = await state.in_store_thread(state.store.record_feedback, items)
    return {"stored": stored}
