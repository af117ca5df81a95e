"""Regression tests for the hostile-client probe (issue "Security"), over real HTTP.

Each finding has its test here or in test_jwt.py (the token findings): fhirServer URLs that
parsers disagree on never receive a connection or the token; another patient's data never
enters a record through a malformed reference; a body or record over the admission limits is
refused before it costs memory or a CQL worker; POSTs must be JSON; the access log never
prints a query string; 405 says what is allowed; the OpenAPI document declares the bodies.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from cds.hooks.routes import SERVICE_ID

from .conftest import (
    FEEDBACK_PATH,
    HOOK_PATH,
    NO_SLE,
    OTHER,
    Service,
    hook_body,
    no_sle_resources,
    other_resources,
)
from .fake_ehr import FakeEhr, Listener

# -- fhirServer: the allowlist decision and the connection are about the same host ---------------------


def _ssrf_variants(allowed_base: str, evil_port: int) -> list[str]:
    """URLs whose allowlisted host is in the text but whose socket would go to `evil_port`."""
    real = allowed_base.split("//", 1)[1]  # 127.0.0.1:PORT/fhir
    evil = f"127.0.0.1:{evil_port}"
    return [
        f"http://{evil}\\@{real}",
        f"http://{evil}\\\\@{real}",
        f"http://{evil}/\\@{real}",
        f"http://{evil}\\{real}",
        f"http://{evil}%5C@{real}",
        f"http://{evil}%2F@{real}",
        f"http://{evil}@{real}",
        f"http://u:p@{real}",
        f"http://{real.split('/')[0]}@{evil}/fhir",
        f"http://{evil}#@{real}",
        f"http://{evil}?@{real}",
        f"http://{evil}\t@{real}",
        f"http://{evil} @{real}",
        f"http:\\\\{evil}\\fhir",
        f"HTTP://{evil}\\@{real}",
        f"http://{evil}\r\n@{real}",
        f"//{real}",
        f"ftp://{real}",
        f"http://{real}/../../admin",
        f"http://{real}/%2e%2e/admin",
        f"http://{real}/x%2f..%2f..%2fadmin",
    ]


def test_fhir_server_urls_the_parsers_disagree_on_never_get_a_connection(service: Service, ehr: FakeEhr) -> None:
    listener = Listener()  # the catch-all: anything that connects here is the SSRF
    try:
        ehr.reset()
        for url in _ssrf_variants(ehr.base_url, listener.port):
            resp, _ = service.hook(hook_body(NO_SLE, fhir_server=url, token="t-ssrf-secret"), timeout=60)
            assert resp.status_code in (400, 412), (url, resp.status_code, resp.text)
            assert "t-ssrf-secret" not in resp.text
            if resp.status_code == 400:
                assert "fhirServer" in resp.json()["error"]
        assert listener.connections() == 0, "no connection to the host hidden in the URL"
        assert all(r.authorization in (None, "") for r in ehr.requests()), "and no token to the allowlisted one"
    finally:
        listener.close()


# -- another patient's data never enters the record ------------------------------------------------------


def _padded_with_others(service: Service, subject: Any) -> dict[str, Any]:
    """NO_SLE's complete prefetch, padded with OTHER's SLE record whose patient field is `subject`."""
    prefetch = service.prefetch(no_sle_resources(), NO_SLE)
    foreign = service.prefetch(other_resources(), OTHER)
    for key, value in foreign.items():
        if key == "patient" or not value or not prefetch.get(key):
            continue
        for entry in value["entry"]:
            res = dict(entry["resource"])
            field = "patient" if res["resourceType"] == "Immunization" else "subject"
            if subject is None:
                res.pop(field, None)
            else:
                res[field] = subject
            prefetch[key]["entry"].append({"resource": res})
    return prefetch


@pytest.mark.parametrize("subject", [
    f"Patient/{NO_SLE}",  # a plain string
    [{"reference": f"Patient/{NO_SLE}"}],  # an array
    {"identifier": {"system": "urn:oid:1.2.3", "value": NO_SLE}},  # identifier only
    None,  # missing
    {"reference": f"https://elsewhere.example/fhir/Patient/{NO_SLE}"},  # another server
    {"reference": f"http://127.0.0.1:1/fhir/Patient/{NO_SLE}"},
    {"reference": f"Patient/{NO_SLE}", "type": "Group"},
    {"reference": f"urn:uuid:{NO_SLE}"},
], ids=["string", "array", "identifier", "missing", "absolute-elsewhere", "absolute-other-port", "type-group",
        "urn-uuid"])
def test_malformed_references_never_bring_another_patients_data(service: Service, subject: Any) -> None:
    body = hook_body(NO_SLE, prefetch=_padded_with_others(service, subject))
    resp, _ = service.hook(body)
    assert resp.status_code == 200 and resp.json() == {"cards": []}, resp.text[:500]
    row = next(r for r in service.state.store.audit_rows() if r["hook_instance"] == body["hookInstance"])
    assert row["dropped"] > 0, "the dropped resources are counted in the audit"


# -- admission: size limits that match the engine ---------------------------------------------------------


def _raw_post(port: int, path: str, head: dict[str, str], body_parts: list[bytes]) -> tuple[int, bytes]:
    """A hand-written HTTP/1.1 POST (so the body can be huge, chunked, or never sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        s.sendall("\r\n".join(lines).encode())
        try:
            for part in body_parts:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused and closed before the client finished: that is the point
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
    return status, data


def test_a_declared_100_mb_body_is_refused_before_it_is_read(service: Service) -> None:
    status, data = _raw_post(service.live.port, HOOK_PATH,
                             {"Content-Type": "application/json", "Content-Length": "100000000"}, [b"{"])
    assert status == 413, data[:300]


def test_a_chunked_body_is_refused_once_it_passes_the_limit(service: Service) -> None:
    limit = service.settings.max_body_bytes
    chunk = b"x" * (1024 * 1024)
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 2)] + [b"0\r\n\r\n"]
    status, data = _raw_post(service.live.port, FEEDBACK_PATH,
                             {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, parts)
    assert status == 413, data[:300]


def test_a_record_over_the_per_type_limit_is_413_and_the_workers_survive(service: Service) -> None:
    pids = sorted(service.state.engine.pool.pids)
    prefetch = service.prefetch(no_sle_resources(), NO_SLE)
    key = next(k for k, v in prefetch.items() if v and v.get("entry")
               and v["entry"][0]["resource"]["resourceType"] == "Observation")
    template = prefetch[key]["entry"][0]["resource"]
    limit = service.settings.max_resources_per_type
    prefetch[key]["entry"] = [{"resource": {**template, "id": f"many-{i}"}} for i in range(limit + 1)]
    resp, _ = service.hook(hook_body(NO_SLE, prefetch=prefetch))
    assert resp.status_code == 413 and "too large" in resp.json()["error"], resp.text[:300]
    assert sorted(service.state.engine.pool.pids) == pids, "no worker was killed or replaced"


# -- media type, methods, logs, OpenAPI -------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_posts_must_be_json(service: Service, content_type: str | None) -> None:
    """A cross-origin form or text/plain POST (no CORS preflight) is never taken as feedback."""
    before = service.state.store.feedback_count()
    raw = b'{"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-26T09:00:00Z"}]}'
    headers = {"Content-Type": content_type} if content_type else {}
    for path in (FEEDBACK_PATH, HOOK_PATH):
        resp = service.client.post(path, content=raw, headers=headers)
        assert resp.status_code == 415, resp.text
        assert "application/json" in resp.json()["error"]
    assert service.state.store.feedback_count() == before


def test_json_with_a_charset_is_json(service: Service) -> None:
    raw = b'{"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-26T09:00:00Z"}]}'
    resp = service.client.post(FEEDBACK_PATH, content=raw, headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status_code == 200


def test_405_says_which_methods_are_allowed(service: Service) -> None:
    resp = service.http.get(service.url(HOOK_PATH), timeout=30)
    assert resp.status_code == 405 and resp.headers["allow"] == "POST" and "error" in resp.json()
    resp = service.http.delete(service.url("/cds-services"), timeout=30)
    assert resp.status_code == 405 and "GET" in resp.headers["allow"]


def test_the_access_log_never_prints_a_query_string(service: Service, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    secret = "tok-" + "q" * 20
    service.http.get(service.url(f"/healthz?access_token={secret}&code=abc"), timeout=30)
    service.http.post(service.url(f"{FEEDBACK_PATH}?token={secret}"), json={"feedback": []}, timeout=30)
    access = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/healthz" in r.getMessage() for r in access), "the access log was captured"
    assert secret not in caplog.text


def test_openapi_declares_request_bodies_and_errors(service: Service) -> None:
    doc = service.http.get(service.url("/openapi.json"), timeout=30).json()
    hook = doc["paths"][f"/cds-services/{SERVICE_ID}"]["post"]
    schema = hook["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/HookRequest"}
    assert {"hook", "hookInstance", "context"} <= set(doc["components"]["schemas"]["HookRequest"]["required"])
    assert {"400", "401", "412", "413", "415", "503"} <= set(hook["responses"])
    feedback = doc["paths"][f"/cds-services/{SERVICE_ID}/feedback"]["post"]
    assert feedback["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/FeedbackRequest")
    refs = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    missing = {r for r in refs if r.split("/")[-1] not in doc["components"]["schemas"]}
    assert not missing, f"dangling $refs: {missing}"
