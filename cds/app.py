"""The FastAPI app: CDS Hooks discovery, patient-view, feedback; health and readiness.

Flow of one hook call (one way, never back up the chain):
request -> record (prefetch, then the EHR's FHIR server) -> evaluation (CQL) -> cards.
Every failure has an answer: 400 malformed request, 401 bad JWT, 412 data unavailable,
503 engine unavailable; nothing reaches the client as a traceback.

The catalogue (trials, their compiled libraries, the CQL engine running them, and what is
derived from them: prefetch queries, orderable codes, the screening library) is one `Rules`
object. `POST /admin/reload` builds a new one off the request path, starts its engine, and
swaps it in atomically; a hook call holds the `Rules` it started with until it answers, and
the old engine closes when its last call has finished.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import AuthError, JwtVerifier
from .cards import build_cards
from .catalogue import Catalogue
from .eligibility import evaluate_trials
from .engine import Engine, EngineError
from .engine.elm import orderable_codes
from .fhir.client import FhirClient, allowed
from .hooks.models import CardsResponse, Discovery, FeedbackRequest, HookRequest, Service
from .hooks.prefetch import PrefetchQuery, prefetch_queries, prefetch_templates
from .record import DataUnavailable, MalformedPrefetch, assemble_record
from .settings import Settings
from .store import Store

log = logging.getLogger("trial_cds")

SERVICE_ID = "sle-car-t-trials"
SCREEN_DEFINE = "In Catalogue Population"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class Rules:
    """One loaded catalogue with its engine and what is derived from it; replaced whole on reload."""

    catalogue: Catalogue
    engine: Engine
    queries: list[PrefetchQuery] = field(default_factory=list)
    orderable: set[tuple[str, str]] = field(default_factory=set)
    screen_library: str | None = None
    _users: int = 0
    _retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and self._users == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new calls; the engine closes now, or when the last call using it finishes."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
            close = self._users == 0
        if close:
            self._close()

    def _close(self) -> None:
        try:
            self.engine.close()
        except Exception:  # a failing close must not fail the call that released it
            log.exception("closing a retired CQL engine failed")


@dataclass
class State:
    """Everything loaded at start-up and shared by requests; `rules` is swapped by a reload."""

    settings: Settings
    rules: Rules
    store: Store
    verifier: JwtVerifier | None
    ready: bool = False
    _swap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    # SQLite writes get their own thread: in the default executor they would queue behind hook
    # calls waiting for a CQL worker, holding every finished answer until the queue drains.
    store_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-cds-store"))

    async def in_store_thread(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.store_thread, partial(fn, *args, **kwargs))

    # The current rules, for code that reads one field (discovery, readiness, tests).
    @property
    def catalogue(self) -> Catalogue:
        return self.rules.catalogue

    @property
    def engine(self) -> Engine:
        return self.rules.engine

    @property
    def queries(self) -> list[PrefetchQuery]:
        return self.rules.queries

    @property
    def orderable(self) -> set[tuple[str, str]]:
        return self.rules.orderable

    @property
    def screen_library(self) -> str | None:
        return self.rules.screen_library

    @contextmanager
    def using_rules(self) -> Iterator[Rules]:
        """The current rules, kept open (engine running) until the block ends, whatever a reload does."""
        with self._swap_lock:
            rules = self.rules
            rules.acquire()
        try:
            yield rules
        finally:
            rules.release()

    def swap(self, new: Rules) -> Rules:
        """Make `new` current; the old rules close once their last call finishes. Returns the old."""
        with self._swap_lock:
            old, self.rules = self.rules, new
        old.retire()
        return old


def load_catalogue(settings: Settings) -> Catalogue:
    source = settings.catalogue
    if source.startswith(("http://", "https://")):
        from .fhir.catalogue import catalogue_from_server

        return catalogue_from_server(source, token=settings.catalogue_token, timeout=settings.fetch_timeout)
    from pathlib import Path

    return Catalogue.from_directory(Path(source))


def _screen_library(catalogue: Catalogue) -> str | None:
    """A library defining "In Catalogue Population" gates the trials (e.g. has SLE at all)."""
    from .engine.elm import define_names

    for name, elm in catalogue.libraries.items():
        if SCREEN_DEFINE in define_names(elm):
            return name
    return None


def build_rules(settings: Settings) -> Rules:
    """Load the catalogue and derive everything from it; the engine is built but not started."""
    from .terminology.txserver import with_terminology_server

    catalogue = with_terminology_server(load_catalogue(settings), settings.terminology_url, timeout=settings.fetch_timeout)
    screen = _screen_library(catalogue)
    names = catalogue.trial_libraries + ([screen] if screen else [])
    queries = prefetch_queries(catalogue.libraries, names, catalogue.value_sets) if names else []
    orderable = orderable_codes(catalogue.libraries, catalogue.value_sets)
    engine = Engine(catalogue.libraries, pool_size=settings.pool_size, timeout=settings.cql_timeout,
                    value_sets=catalogue.value_sets)
    return Rules(catalogue=catalogue, engine=engine, queries=queries, orderable=orderable, screen_library=screen)


def build_state(settings: Settings) -> State:
    rules = build_rules(settings)
    store = Store(settings.db)
    verifier = None if settings.insecure else JwtVerifier(settings.trusted_issuers)
    return State(settings=settings, rules=rules, store=store, verifier=verifier)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.insecure:
            log.warning("INSECURE MODE: hooks are accepted without a JWT. Never use this with real patient data.")
        state = build_state(settings)
        app.state.cds = state
        await asyncio.to_thread(state.engine.start)
        state.ready = True
        log.info("trial-cds ready: %d trials, %d CQL workers", len(state.catalogue.trials), len(state.engine.pool.pids))
        try:
            yield
        finally:
            state.ready = False
            state.rules.retire()
            state.store_thread.shutdown(wait=True)
            state.store.close()

    app = FastAPI(title="trial-cds", version="0.1.0", lifespan=lifespan,
                  description="CDS Hooks 2.0 service: clinical trials a patient may join, with evidence per criterion.")
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe(exc.errors())}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the request was not processed"}, status_code=503)

    def state_of(request: Request) -> State:
        return request.app.state.cds

    def authenticate(request: Request, endpoint: str) -> None:
        state = state_of(request)
        if state.verifier is None:
            return
        audience = f"{state.settings.base_url}{endpoint}"
        try:
            state.verifier.verify(request.headers.get("authorization"), audience)
        except AuthError as exc:
            log.warning("rejected call to %s: %s", endpoint, exc.reason)
            raise ApiError(401, f"authentication failed: {exc.reason}") from None

    def authenticate_admin(request: Request, endpoint: str) -> None:
        """A bearer equal to TRIAL_CDS_ADMIN_TOKEN, or a CDS Hooks JWT with aud = this endpoint's URL.

        Insecure mode: the admin token when one is set, else open (local demos only)."""
        state = state_of(request)
        admin = state.settings.admin_token
        scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
        if admin and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"),
                                                                        admin.encode("utf-8")):
            return
        if state.verifier is None:
            if admin:
                log.warning("rejected call to %s: no or wrong admin token", endpoint)
                raise ApiError(401, "authentication failed: this endpoint needs the admin bearer token")
            return
        authenticate(request, endpoint)

    @app.post("/admin/reload", tags=["ops"])
    async def reload(request: Request) -> JSONResponse:
        """Read the catalogue again (bundles directory or FHIR server) and swap it in.

        Answers {"trials": [ids], "problems": [...]}; when the new catalogue cannot be loaded, has no
        trial, or its engine does not start, the old one stays in use and the answer is 503."""
        authenticate_admin(request, "/admin/reload")
        state = state_of(request)
        async with state.reload_lock:
            started = time.perf_counter()
            try:
                new = await asyncio.to_thread(build_rules, state.settings)
            except Exception as exc:
                log.warning("catalogue reload failed; keeping the current catalogue: %s", _reason(exc))
                raise ApiError(503, f"reload failed, the previous catalogue stays in use: {_reason(exc)}") from None
            if not new.catalogue.trials:
                new.retire()
                problems = "; ".join(new.catalogue.problems[:5]) or "no active ResearchStudy"
                log.warning("catalogue reload found no usable trial; keeping the current catalogue: %s", problems)
                raise ApiError(503, f"reload failed, the previous catalogue stays in use: no usable trial ({problems})")
            try:
                await asyncio.to_thread(new.engine.start)
            except Exception as exc:
                new.retire()
                log.warning("new CQL engine did not start; keeping the current catalogue: %s", _reason(exc))
                raise ApiError(503, f"reload failed, the previous catalogue stays in use: {_reason(exc)}") from None
            state.swap(new)
        log.info("catalogue reloaded in %.0f ms: %d trials, %d problems", _ms(started), len(new.catalogue.trials),
                 len(new.catalogue.problems))
        return JSONResponse({"trials": [t.id for t in new.catalogue.trials], "problems": new.catalogue.problems})

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        state: State | None = getattr(request.app.state, "cds", None)
        ok = bool(state and state.ready and state.engine.pool.ready and state.catalogue.trials)
        body = {"ready": ok, "trials": len(state.catalogue.trials) if state else 0,
                "workers": len(state.engine.pool.pids) if state else 0,
                "catalogueProblems": state.catalogue.problems if state else [],
                "terminology": state.catalogue.terminology if state else {}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/cds-services", response_model=Discovery, response_model_exclude_none=True, tags=["cds-hooks"])
    async def discovery(request: Request) -> Discovery:
        authenticate(request, "/cds-services")
        state = state_of(request)
        return Discovery(services=[service_description(state)])

    @app.post(f"/cds-services/{SERVICE_ID}", response_model=CardsResponse, response_model_exclude_none=True,
              tags=["cds-hooks"])
    async def patient_view(request: Request) -> Response:
        started = time.perf_counter()
        authenticate(request, f"/cds-services/{SERVICE_ID}")
        state = state_of(request)
        raw = await request.body()
        parse_started = time.perf_counter()
        hook = parse_body(raw, HookRequest)
        timings = {"parse": _ms(parse_started)}
        if hook.hook != "patient-view":
            raise ApiError(400, f"this service answers the patient-view hook, not {hook.hook[:64]!r}")
        try:
            patient_id = str(hook.context["patientId"])
            from .hooks.models import PatientViewContext

            PatientViewContext.model_validate(hook.context)
        except (KeyError, ValidationError) as exc:
            raise ApiError(400, "context.patientId is required (a FHIR id)") from exc
        status, cards, verdicts, source = 200, [], {}, None
        try:
            cards, verdicts, source = await asyncio.to_thread(run_hook, state, hook, patient_id, timings)
            serialize_started = time.perf_counter()
            body = CardsResponse(cards=cards).model_dump_json(exclude_none=True).encode("utf-8")
            timings["serialize"] = _ms(serialize_started)
            timings["total"] = _ms(started)
            # Server-Timing (W3C): where the time of this call went, for EHR-side tracing and bench/hook.py.
            return Response(body, media_type="application/json", headers={"Server-Timing": server_timing(timings)})
        except ApiError as exc:
            status = exc.status
            raise
        except Exception:
            status = 503  # the generic handler answers 503; the audit must not say 200
            raise
        finally:
            latency = _ms(started)
            try:  # off the event loop: the commit fsyncs (synchronous=FULL)
                await state.in_store_thread(
                    state.store.record_hook, hook_instance=hook.hookInstance, patient_id=patient_id, status=status,
                    verdicts=verdicts, latency_ms=latency, data_source=source,
                    cards=[(c.uuid or "", c.extension["trial-cds"]["researchStudy"],
                            c.extension["trial-cds"]["verdict"]) for c in cards if c.extension])
            except Exception:  # the answer must not be lost because the audit failed
                log.exception("audit write failed for a hook call")

    @app.post(f"/cds-services/{SERVICE_ID}/feedback", tags=["cds-hooks"])
    async def feedback(request: Request) -> dict[str, Any]:
        authenticate(request, f"/cds-services/{SERVICE_ID}/feedback")
        state = state_of(request)
        body = parse_body(await request.body(), FeedbackRequest)
        items = [f.model_dump(mode="json", exclude_none=True) for f in body.feedback]
        stored = await state.in_store_thread(state.store.record_feedback, items)
        return {"stored": stored}

    return app


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


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def server_timing(timings: dict[str, float]) -> str:
    return ", ".join(f"{name};dur={value:.1f}" for name, value in timings.items())


def parse_body(raw: bytes, model: type[Any]) -> Any:
    if len(raw) > 20_000_000:
        raise ApiError(413, "request body too large")
    try:
        # Strict UTF-8 (RFC 8259): json.loads(bytes) would also take UTF-16 and "surrogatepass"
        # byte sequences, whose strings can then not be written to a response, a log or SQLite.
        text = raw.decode("utf-8-sig")
        doc = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):  # \ud83d\ude00 pairs are fine; a lone \ud800 is not text
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise ApiError(400, "request body holds an unpaired UTF-16 surrogate escape") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ApiError(400, _describe(exc.errors())) from None


def _describe(errors: Any) -> str:
    parts = []
    for e in list(errors)[:5]:
        loc = ".".join(str(x)[:64] for x in e.get("loc", ()) if x != "body")  # keys are the client's text
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def run_hook(state: State, hook: HookRequest, patient_id: str,
             timings: dict[str, float] | None = None) -> tuple[list[Any], dict[str, str], str]:
    """Record -> evaluation -> cards; runs in a worker thread. `timings` receives ms per phase."""
    timings = {} if timings is None else timings
    started = time.perf_counter()
    fetcher = None
    if hook.fhirServer and allowed(hook.fhirServer, state.settings.fhir_allowlist):
        token = hook.fhirAuthorization.access_token if hook.fhirAuthorization else None
        fetcher = FhirClient(hook.fhirServer, token, timeout=state.settings.fetch_timeout,
                             budget=state.settings.hook_budget, page_cap=state.settings.fetch_page_cap)
    elif hook.fhirServer:
        log.warning("fhirServer is not in TRIAL_CDS_FHIR_ALLOWLIST; it will not be called")
    with state.using_rules() as rules:
        return _run_hook(state, rules, hook, patient_id, fetcher, timings, started)


def _run_hook(state: State, rules: Rules, hook: HookRequest, patient_id: str, fetcher: FhirClient | None,
              timings: dict[str, float], started: float) -> tuple[list[Any], dict[str, str], str]:
    try:
        try:
            record = assemble_record(patient_id, rules.queries, hook.prefetch, fetcher)
        finally:
            if fetcher is not None:
                fetcher.close()
    except MalformedPrefetch as exc:
        raise ApiError(400, str(exc)) from None
    except DataUnavailable as exc:
        raise ApiError(412, f"patient data unavailable ({exc})") from None
    source = ",".join(sorted(set(record.sources.values())))
    timings["record"] = _ms(started)
    started = time.perf_counter()
    at = time.time()
    from datetime import datetime, timezone

    now = datetime.fromtimestamp(at, tz=timezone.utc)
    try:
        if rules.screen_library:
            screen = rules.engine.evaluate(record.bundle, [rules.screen_library], now)
            if screen.raw[rules.screen_library].get(SCREEN_DEFINE) is not True:
                timings["cql"] = _ms(started)
                timings["cards"] = 0.0
                return [], {}, source
        results = evaluate_trials(rules.engine, rules.catalogue, record.bundle, now)
    except EngineError as exc:
        raise ApiError(503, f"eligibility rules could not be evaluated: {exc}") from None
    timings["cql"] = _ms(started)
    started = time.perf_counter()
    verdicts = {r.researchStudy: r.verdict for r in results}
    cards = build_cards(rules.catalogue.trials, results, patient_id, hook.hookInstance, rules.orderable)
    timings["cards"] = _ms(started)
    return cards, verdicts, source
