"""Service test fixtures: the app served over real HTTP (uvicorn in a thread), an in-process
client on the same app, a fake EHR FHIR server, synthetic patients and hook bodies.

The app and its CQL workers start once per session (startup is the slow part); tests that
need other settings (JWT) start their own app once per module.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cds.app import SERVICE_ID, State, create_app
from cds.hooks.prefetch import PrefetchQuery
from cds.settings import Settings
from cds.synthetic import fhir as F
from cds.synthetic.ehr import prefetch_for
from cds.web.server import uvicorn_config

from ..trials.test_000_criteria import fits
from .fake_ehr import FakeEhr, closed_port

# Patients are built "as of" now: the service evaluates at the hook's own time.
NOW = datetime.now(UTC).replace(microsecond=0)
FIT = "svc-fit"  # likely eligible for trial 000, possibly for others
NO_SLE = "svc-nosle"  # type 2 diabetes, no lupus: no cards
OTHER = "svc-other"  # someone else, with SLE: must never leak into FIT's or NO_SLE's record

HOOK_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{HOOK_PATH}/feedback"

# What each hook may take on this (busy, 2-core) machine before a test calls it a hang.
CQL_HOOK_TIMEOUT = 180.0
STARTUP_TIMEOUT = 240.0


def fit_resources(pid: str = FIT) -> list[dict[str, Any]]:
    return fits(pid, NOW)


def no_sle_resources(pid: str = NO_SLE) -> list[dict[str, Any]]:
    return [
        F.patient(pid, date(NOW.year - 52, 2, 3), "male", name="NoLupus"),
        F.condition(pid, "SNOMEDCT", "44054006", date(2015, 6, 1), rid=f"{pid}-t2dm"),
        F.observation(pid, "LOINC", "2160-0", NOW - timedelta(days=5), value=0.9, unit="mg/dL", ref_high=1.2,
                      rid=f"{pid}-creat"),
        F.observation(pid, "LOINC", "718-7", NOW - timedelta(days=5), value=141, unit="g/L", rid=f"{pid}-hb"),
    ]


def other_resources() -> list[dict[str, Any]]:
    return fit_resources(OTHER)


def bundle_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def hook_body(pid: str, *, prefetch: dict[str, Any] | None = None, fhir_server: str | None = None,
              token: str | None = None, hook_instance: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": hook_instance or str(uuid.uuid4()),
        "context": {"userId": "Practitioner/svc-test", "patientId": pid},
    }
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if token is not None:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "user/*.read", "subject": "trial-cds"}
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `condition()` until truthy (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class LiveServer:
    """uvicorn serving an app from a thread on a free port (real HTTP, real lifespan)."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        config = uvicorn_config(app, "127.0.0.1", self.port, log_config=None, access_log=True, lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), STARTUP_TIMEOUT, what="uvicorn start")
        if not self.server.started:
            raise RuntimeError("the service did not start (see the log above)")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@dataclass
class Service:
    """One running app: over HTTP (`http`, `url`) and in-process (`client`)."""

    app: FastAPI
    live: LiveServer
    http: requests.Session
    client: TestClient
    settings: Settings

    @property
    def state(self) -> State:
        return self.app.state.cds

    @property
    def queries(self) -> list[PrefetchQuery]:
        return self.state.queries

    def url(self, path: str) -> str:
        return self.live.base_url + path

    def prefetch(self, resources: list[dict[str, Any]], pid: str) -> dict[str, Any]:
        return prefetch_for(bundle_of(resources), self.queries, pid)

    def hook(self, body: Any, *, timeout: float = CQL_HOOK_TIMEOUT, **kw: Any) -> tuple[requests.Response, float]:
        started = time.monotonic()
        resp = self.http.post(self.url(HOOK_PATH), json=body, timeout=timeout, **kw)
        return resp, time.monotonic() - started


def start_service(settings: Settings) -> tuple[FastAPI, LiveServer]:
    app = create_app(settings)
    live = LiveServer(app).start()
    return app, live


@pytest.fixture(scope="session")
def ehr() -> Iterator[FakeEhr]:
    server = FakeEhr(page_size=4).start()
    server.load(fit_resources() + no_sle_resources() + other_resources())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def down_url() -> str:
    """An allowlisted FHIR base where nothing listens."""
    return f"http://127.0.0.1:{closed_port()}/fhir"


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory: pytest.TempPathFactory, ehr: FakeEhr, down_url: str) -> Settings:
    db: Path = tmp_path_factory.mktemp("service") / "trial-cds.sqlite"
    # A small fetch budget so the fault tests are quick; CQL gets a generous timeout on this busy machine.
    return Settings(insecure=True, db=db, fhir_allowlist=[ehr.base_url, down_url], hook_budget=3.0,
                    fetch_timeout=1.0, cql_timeout=120.0)


@pytest.fixture(scope="session")
def service(service_settings: Settings) -> Iterator[Service]:
    app, live = start_service(service_settings)
    http = requests.Session()
    http.trust_env = False
    # In-process client on the same running app (no second lifespan: uvicorn's state is used).
    client = TestClient(app, raise_server_exceptions=False)
    try:
        yield Service(app, live, http, client, service_settings)
    finally:
        http.close()
        live.stop()


# -- hook calls that run the CQL (slow): made once, shared by the tests that read them ------------


@dataclass
class HookCall:
    body: dict[str, Any]
    status: int
    doc: Any
    headers: dict[str, str]
    elapsed: float
    ehr_requests: list[Any]


def _call(service: Service, ehr: FakeEhr, body: dict[str, Any]) -> HookCall:
    ehr.reset()
    resp, elapsed = service.hook(body)
    doc = resp.json()
    return HookCall(body, resp.status_code, doc, dict(resp.headers), elapsed, ehr.requests())


FIT_INSTANCE = str(uuid.uuid4())


@pytest.fixture(scope="session")
def fit_by_prefetch(service: Service, ehr: FakeEhr) -> HookCall:
    """The likely-eligible patient with a complete prefetch (no fhirServer)."""
    return _call(service, ehr, hook_body(FIT, prefetch=service.prefetch(fit_resources(), FIT),
                                         hook_instance=FIT_INSTANCE))


@pytest.fixture(scope="session")
def fit_by_prefetch_again(service: Service, ehr: FakeEhr, fit_by_prefetch: HookCall) -> HookCall:
    """The same hookInstance again (a client retry)."""
    return _call(service, ehr, hook_body(FIT, prefetch=service.prefetch(fit_resources(), FIT),
                                         hook_instance=FIT_INSTANCE))


FETCH_TOKEN = "ehr-access-token-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def fit_by_fetch(service: Service, ehr: FakeEhr) -> HookCall:
    """The same patient with no prefetch: everything read from the fake EHR, page by page."""
    return _call(service, ehr, hook_body(FIT, fhir_server=ehr.base_url, token=FETCH_TOKEN))
