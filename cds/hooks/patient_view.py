"""One patient-view call, one way: request -> record -> evaluation -> cards.

Runs in a worker thread (the record may be fetched over the network and the CQL runs in a
Node worker). Failures come out as ApiError: 400 malformed prefetch, 412 data unavailable,
413 record too large for the engine's budget, 503 engine unavailable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..cards import build_cards
from ..eligibility import evaluate_trials
from ..engine import EngineError
from ..fhir.client import FhirClient
from ..net.urls import HttpUrl, allowed, parse_http_url
from ..record import DataUnavailable, Limits, MalformedPrefetch, RecordTooLarge, assemble_record
from ..ruleset import SCREEN_DEFINE, RuleSet
from ..settings import Settings
from ..smart import LAUNCH_PATH
from ..web.errors import ApiError
from .models import Card, HookRequest

log = logging.getLogger("trial_cds")


@dataclass
class HookOutcome:
    """What the call produced, for the answer and the audit row."""

    cards: list[Card] = field(default_factory=list)
    verdicts: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    dropped: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def fhir_server_of(hook: HookRequest) -> HttpUrl | None:
    """The hook's fhirServer parsed by the URL policy (the model already refused what fails it)."""
    return parse_http_url(hook.fhirServer) if hook.fhirServer else None


def run_hook(rules: RuleSet, settings: Settings, hook: HookRequest, patient_id: str,
             outcome: HookOutcome) -> None:
    """Fill `outcome`; raise ApiError for answers other than 200."""
    started = time.perf_counter()
    server = fhir_server_of(hook)
    fetcher = None
    if server is not None and allowed(server, settings.allowlist):
        token = hook.fhirAuthorization.access_token if hook.fhirAuthorization else None
        fetcher = FhirClient(server, token, timeout=settings.fetch_timeout, budget=settings.hook_budget,
                             page_cap=settings.fetch_page_cap)
    elif server is not None:
        log.warning("fhirServer is not in TRIAL_CDS_FHIR_ALLOWLIST; it will not be called")
    limits = Limits(settings.max_record_resources, settings.max_resources_per_type)
    try:
        try:
            record = assemble_record(patient_id, rules.queries, hook.prefetch, fetcher, fhir_server=server,
                                     limits=limits)
        finally:
            if fetcher is not None:
                fetcher.close()
    except MalformedPrefetch as exc:
        raise ApiError(400, str(exc)) from None
    except RecordTooLarge as exc:
        status = 413 if exc.source == "prefetch" else 412
        raise ApiError(status, f"patient record too large to evaluate ({exc})") from None
    except DataUnavailable as exc:
        raise ApiError(412, f"patient data unavailable ({exc})") from None
    outcome.source = ",".join(sorted(set(record.sources.values())))
    outcome.dropped = record.dropped
    if record.dropped:
        log.warning("%d resources dropped from a hook record: no well-formed reference to the context patient",
                    record.dropped)
    outcome.timings["record"] = _ms(started)
    started = time.perf_counter()
    now = datetime.now(UTC)
    try:
        if rules.screen_library:
            screen = rules.engine.evaluate(record.bundle, [rules.screen_library], now)
            if screen.raw[rules.screen_library].get(SCREEN_DEFINE) is not True:
                outcome.timings["cql"] = _ms(started)
                return
        results = evaluate_trials(rules.engine, rules.catalogue, record.bundle, now)
    except EngineError as exc:
        raise ApiError(503, f"eligibility rules could not be evaluated: {exc}") from None
    outcome.timings["cql"] = _ms(started)
    started = time.perf_counter()
    outcome.verdicts = {r.researchStudy: r.verdict for r in results}
    outcome.cards = build_cards(rules.catalogue.trials, results, patient_id, hook.hookInstance, rules.orderable,
                                record=record.bundle, app_url=f"{settings.base_url}{LAUNCH_PATH}")
    outcome.timings["cards"] = _ms(started)


def audit_cards(cards: list[Card]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for c in cards:
        ext: Any = c.extension and c.extension.get("trial-cds")
        if ext:
            out.append((c.uuid or "", ext["researchStudy"], ext["verdict"]))
    return out
