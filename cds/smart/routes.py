"""The clinician view: a SMART on FHIR app served by the service at /app, and its evaluation API.

How the app gets its evaluation (see README, "The clinician view"):
  1. The EHR launches /app/launch.html (EHR launch from the card's `smart` link: `iss` + `launch`;
     or standalone: `iss` only). fhirclient (vendored, pinned) does SMART App Launch: PKCE,
     authorize, token. `appContext` is the card's uuid, an opaque id; no patient data is ever
     read from it.
  2. With its own access token the app reads the record from the FHIR server, in the browser,
     with the queries the service advertises (GET /app/api/config: the same templates as the
     hook's prefetch, derived from the ELM).
  3. It posts what it read to POST /app/api/evaluate, exactly like a hook's prefetch, with its
     OpenID id_token as bearer. The service checks the id_token (trusted issuer, audience = the
     app's client id, signature, expiry), assembles the record through the same code path as a
     hook (so the checklist equals the card), runs every trial's CQL, and answers the per-trial
     view. Nothing is stored, nothing about the patient is logged; the access token never
     reaches the service.

Why this way: the access token goes only to the FHIR server it was issued for (the guide's
rule), the service needs no outbound call chosen by a browser (no SSRF surface, no new
allowlist), and the record is evaluated by the same normalisation and rules as the card. The
endpoint only derives results from what the caller sent plus the public catalogue, so it can
disclose nothing the caller does not already hold; it is still authenticated (id_token), bounded
(body size, concurrent evaluations, the engine's timeout) and answers 4xx for bad input.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..eligibility import evaluate_trials
from ..engine import EngineError
from ..hooks.models import FhirId
from ..net.urls import HttpUrl, UnsafeUrl, parse_http_url
from ..record import DataUnavailable, Limits, MalformedPrefetch, RecordTooLarge, assemble_record
from ..state import State
from ..web.body import json_body
from ..web.deps import StateDep, refuse_authentication
from ..web.errors import error_responses, json_request
from . import APP_PATH
from .idtoken import IdTokenError, IdTokenVerifier
from .view import evaluation_view

log = logging.getLogger("trial_cds.smart")

STATIC = Path(__file__).parent / "static"
EHR_SCOPE = "launch openid fhirUser patient/*.read patient/ServiceRequest.write"
STANDALONE_SCOPE = "launch/patient openid fhirUser patient/*.read patient/ServiceRequest.write"


class SmartSettings(BaseSettings):
    """`TRIAL_CDS_SMART_*`: who may use the clinician view's evaluation endpoint."""

    model_config = SettingsConfigDict(env_prefix="TRIAL_CDS_SMART_", extra="ignore")

    issuers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="OpenID issuers (SMART authorization servers) whose id_tokens are accepted")
    client_id: str = Field("trial-cds", description="the app's SMART client id, registered with the EHR")
    concurrency: int = Field(2, ge=1, le=16, description="app evaluations at once (hooks keep the rest of the pool)")

    @field_validator("issuers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return [v.strip().rstrip("/") for v in value.split(",") if v.strip()] if isinstance(value, str) else value


class AppError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class EvaluateRequest(BaseModel):
    """What the app sends: the record it read with its own token, shaped like a hook's prefetch."""

    model_config = ConfigDict(extra="forbid")

    patientId: FhirId = Field(description="the patient of the SMART launch context")
    prefetch: dict[str, dict[str, Any] | None] = Field(
        description="query key (GET /app/api/config) -> what the FHIR server answered (a Bundle, a resource or null)")
    launch: str | None = Field(None, max_length=200, description="the opaque appContext of the launch (a card's uuid)")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


def _origins(urls: list[str]) -> list[str]:
    """`scheme://host[:port]` of each URL that passes the URL policy (for the CSP's connect-src)."""
    out = []
    for u in urls:
        try:
            url = parse_http_url(u)
        except UnsafeUrl:
            continue
        out.append(str(HttpUrl(url.scheme, url.host, url.port, "")))
    return sorted(set(out))


def create_router(smart: SmartSettings | None = None) -> APIRouter:
    smart = smart or SmartSettings()
    verifier = IdTokenVerifier(smart.issuers, smart.client_id)
    gate = asyncio.Semaphore(smart.concurrency)
    router = APIRouter(prefix=f"{APP_PATH}/api", tags=["clinician view"])

    async def authenticate(request: Request, state: State) -> None:
        if verifier.configured:
            try:
                await verifier.verify(request.headers.get("authorization"))
            except IdTokenError as exc:
                raise refuse_authentication(f"{APP_PATH}/api/evaluate", str(exc)) from None
        elif not state.settings.insecure:
            raise refuse_authentication(f"{APP_PATH}/api/evaluate",
                                        "the clinician view is not configured (TRIAL_CDS_SMART_ISSUERS is empty)")

    @router.get("/config")
    async def config(state: StateDep) -> JSONResponse:
        """What the app needs before it launches: its client id, scopes, FHIR servers it may use, the queries."""
        queries = [{"key": q.key, "template": q.template} for q in state.rules.queries]
        return JSONResponse({"clientId": smart.client_id, "ehrScope": EHR_SCOPE, "standaloneScope": STANDALONE_SCOPE,
                             "allowedIss": state.settings.fhir_allowlist, "queries": queries},
                            headers={"Cache-Control": "no-store"})

    @router.post("/evaluate", openapi_extra=json_request(EvaluateRequest),
                 responses=error_responses(400, 401, 413, 415, 503))
    async def evaluate(request: Request, state: StateDep) -> Response:
        """The record the app read with its own token -> every trial's checklist (nothing stored)."""
        await authenticate(request, state)
        body = await json_body(request, EvaluateRequest, state.settings.max_body_bytes)
        try:
            async with gate:
                view = await asyncio.to_thread(_evaluate, state, body.patientId, body.prefetch, body.launch)
        except AppError as exc:
            return _error(exc.status, exc.message)
        return JSONResponse(view, headers={"Cache-Control": "no-store"})

    return router


def _evaluate(state: State, patient_id: str, prefetch: dict[str, Any], launch: str | None) -> dict[str, Any]:
    limits = Limits(state.settings.max_record_resources, state.settings.max_resources_per_type)
    with state.using_rules() as rules:
        try:
            record = assemble_record(patient_id, rules.queries, prefetch, None, limits=limits)
        except MalformedPrefetch as exc:
            raise AppError(400, str(exc)) from None
        except RecordTooLarge as exc:
            raise AppError(413, f"patient record too large to evaluate ({exc})") from None
        except DataUnavailable as exc:
            raise AppError(400, f"the record is incomplete: {exc}") from None
        now = datetime.now(UTC)
        try:
            results = evaluate_trials(rules.engine, rules.catalogue, record.bundle, now)
        except EngineError as exc:
            raise AppError(503, f"eligibility rules could not be evaluated: {exc}") from None
        focus = state.store.card_trial(launch) if launch else None
        trials = evaluation_view(rules.catalogue.trials, results, rules.orderable, record.bundle, patient_id, focus)
    return {"evaluatedAt": now.isoformat().replace("+00:00", "Z"), "patientId": patient_id, "focus": focus,
            "trials": trials}


def install(app: FastAPI, smart: SmartSettings | None = None) -> None:
    """Add the clinician view to the service: its API router, its static files, their headers."""
    smart = smart or SmartSettings()
    app.include_router(create_router(smart))

    @app.middleware("http")
    async def _app_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        if request.url.path.startswith(f"{APP_PATH}/") and not request.url.path.startswith(f"{APP_PATH}/api/"):
            settings = request.app.state.cds.settings if hasattr(request.app.state, "cds") else None
            allowed = _origins((settings.fhir_allowlist if settings else []) + smart.issuers)
            connect = " ".join(["'self'", *allowed]) if allowed else "'self' http: https:"
            response.headers["Content-Security-Policy"] = (
                f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src {connect}; "
                "base-uri 'none'; form-action 'self'; object-src 'none'")
            response.headers["Referrer-Policy"] = "no-referrer"  # the redirect URL carries the code and state
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Cache-Control"] = "no-cache"
        return response

    app.mount(APP_PATH, StaticFiles(directory=STATIC, html=True), name="clinician-view")
