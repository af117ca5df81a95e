"""A small real HTTP FHIR server standing in for the EHR (threading http.server, 127.0.0.1).

It answers the service's own queries over a set of patient resources (query matching by
`cds.synthetic.ehr.search`), pages every search with a fixed page size and `next` links,
records each request's path and Authorization/Cookie headers, and can be switched to fault
modes (hang, slow, HTTP status, 429 with Retry-After, truncated or invalid JSON, a `next`
link to another server, a Set-Cookie). A real FHIR engine comes in a later issue.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from cds.synthetic.ehr import search

OFFSET_PARAM = "_getpagesoffset"  # HAPI's name for the page offset in its `next` links


@dataclass(frozen=True)
class Seen:
    path: str
    authorization: str | None
    cookie: str | None


@dataclass
class Fault:
    """What the server does instead of (or on top of) answering normally."""

    mode: str = "ok"  # ok | hang | slow | trickle | status | 429 | truncated | invalid-json | offsite-next | cookie
    seconds: float = 0.0  # hang / slow: delay before answering; trickle: delay between bytes
    status: int = 500  # status mode
    retry_after: str | None = None  # 429 mode
    times: int | None = None  # fault only the first N requests (None: all)
    other_base: str = ""  # offsite-next: where the next link points
    hits: int = field(default=0)
    released: threading.Event = field(default_factory=threading.Event)  # set when the test is done with it


class FakeEhr:
    def __init__(self, page_size: int = 4, prefix: str = "/fhir") -> None:
        self.page_size = page_size
        self.prefix = prefix
        self.resources: list[dict[str, Any]] = []
        self.seen: list[Seen] = []
        self.fault = Fault()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-ehr", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def start(self) -> FakeEhr:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.fault.released.set()  # wakes handlers sleeping in hang/slow modes
        self._server.shutdown()
        self._server.server_close()

    # -- state ----------------------------------------------------------------------------------

    def load(self, resources: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self.resources.extend(resources)

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.fault = Fault()

    @contextmanager
    def faulty(self, **kwargs: Any) -> Iterator[Fault]:
        with self._lock:
            self.fault = Fault(**kwargs)
        try:
            yield self.fault
        finally:
            with self._lock:
                self.fault.released.set()  # a handler still sleeping in it returns without answering
                self.fault = Fault()

    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    # -- answering ------------------------------------------------------------------------------

    def _take_fault(self) -> Fault | None:
        with self._lock:
            f = self.fault
            if f.mode == "ok":
                return None
            f.hits += 1
            if f.times is not None and f.hits > f.times:
                return None
            return f

    def answer(self, target: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(target)
        if not parts.path.startswith(self.prefix + "/"):
            return 404, _outcome("not-found", "no such endpoint")
        rel = parts.path[len(self.prefix) + 1:]
        with self._lock:
            resources = list(self.resources)
        if "/" in rel:  # read: Type/id
            rtype, _, rid = rel.partition("/")
            found = next((r for r in resources if r.get("resourceType") == rtype and r.get("id") == rid), None)
            return (200, found) if found else (404, _outcome("not-found", f"{rtype}/{rid} is not known"))
        params = [(k, v) for k, v in parse_qsl(parts.query) if k != OFFSET_PARAM]
        offset = int(dict(parse_qsl(parts.query)).get(OFFSET_PARAM, "0"))
        matches = search(resources, f"{rel}?{urlencode(params)}")
        page = matches[offset:offset + self.page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle", "type": "searchset", "total": len(matches),
            "link": [{"relation": "self", "url": f"http://127.0.0.1:{self.port}{target}"}],
            "entry": [{"fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in page],
        }
        if offset + self.page_size < len(matches):
            query = urlencode(params + [(OFFSET_PARAM, str(offset + self.page_size))])
            bundle["link"].append({"relation": "next", "url": f"{self.base_url}/{rel}?{query}"})
        return 200, bundle


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout) makes the late write fail; that is expected here


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _handler(ehr: FakeEhr) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with ehr._lock:
                ehr.seen.append(Seen(self.path, self.headers.get("Authorization"), self.headers.get("Cookie")))
            fault = ehr._take_fault()
            mode = fault.mode if fault else "ok"
            if mode in ("hang", "slow") and (fault.released.wait(fault.seconds) or ehr.stopping.is_set()):
                return
            if mode == "status":
                self._send(fault.status, json.dumps(_outcome("exception", "fault injected")).encode())
                return
            if mode == "429":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send(429, json.dumps(_outcome("throttled", "slow down")).encode(), headers)
                return
            status, doc = ehr.answer(self.path)
            if mode == "offsite-next" and doc.get("resourceType") == "Bundle":
                for link in doc.get("link", []):
                    if link["relation"] == "next":
                        link["url"] = fault.other_base + link["url"][len(ehr.base_url):]
            body = json.dumps(doc).encode()
            if mode == "truncated":  # promises the whole body, sends half, hangs up
                self._send(status, body[: len(body) // 2], length=len(body))
                self.close_connection = True
                return
            if mode == "trickle":  # a byte at a time, each well inside the per-read timeout
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    if fault.released.wait(fault.seconds) or ehr.stopping.is_set():
                        return
                return
            if mode == "invalid-json":
                self._send(status, body[: len(body) // 2])
                return
            self._send(status, body, {"Set-Cookie": "ehrsession=s3cr3t; Path=/"} if mode == "cookie" else None)

    return Handler


class Listener:
    """A bare listening socket that records whether anyone connected (nothing is answered)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def connections(self) -> int:
        """Connections made so far (the kernel completes handshakes even before accept)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.accepted
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
