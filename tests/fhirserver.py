"""Start and stop the test FHIR server (tests/fhir_server/server.mjs, Medplum's FHIR router in Node).

    with FhirTestServer() as server:
        requests.get(f"{server.base_url}/Patient/x")
        server.reset(token="secret")     # clear data + request log; require this bearer token
        server.requests()                # [{"method", "path", "authorization"}, ...]

Needs Node and `npm ci --prefix tests/fhir_server` (the project's install step). The server prints
one JSON line when it listens; we wait for that line, never sleep. It exits when its stdin closes,
so even a killed test run leaves no server behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

SERVER_DIR = Path(__file__).parent / "fhir_server"
SCRIPT = SERVER_DIR / "server.mjs"
START_TIMEOUT = 60.0


class FhirServerUnavailable(RuntimeError):
    """Node or the server's npm packages are missing (run `npm ci --prefix tests/fhir_server`)."""


class FhirTestServer:
    def __init__(self, *, token: str | None = None, base: str = "/fhir/R4", smart: bool = False,
                 smart_clients: dict[str, str] | None = None) -> None:
        """`smart`: run the SMART authorization server (oidc-provider) at /oauth and check a SMART
        bearer token on every FHIR call (`token` stays accepted: the tests' and the loader's own);
        `smart_clients`: public client id -> redirect URI."""
        self._token = token
        self._base = base
        self._smart = smart
        self._clients = smart_clients or {}
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> FhirTestServer:
        node = shutil.which("node")
        if node is None:
            raise FhirServerUnavailable("node is not on PATH")
        if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
            raise FhirServerUnavailable("tests/fhir_server/node_modules is missing: run `npm ci --prefix tests/fhir_server`")
        cmd = [node, str(SCRIPT), "--port", "0", "--base", self._base]
        if self._token:
            cmd += ["--token", self._token]
        if self._smart:
            cmd.append("--smart")
            for client_id, redirect in self._clients.items():
                cmd += ["--smart-client", f"{client_id}={redirect}"]
        self._proc = subprocess.Popen(cmd, cwd=SERVER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, encoding="utf-8")
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        ready: dict[str, Any] = {}
        got_line = threading.Event()

        def read_ready() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            for line in self._proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("event") == "ready":
                    ready.update(msg)
                    break
            got_line.set()
            for _ in self._proc.stdout:  # keep draining so the server never blocks on a full pipe
                pass

        threading.Thread(target=read_ready, daemon=True).start()
        if not got_line.wait(START_TIMEOUT) or not ready:
            self.stop()
            raise RuntimeError("test FHIR server did not start:\n" + "".join(self._stderr[-50:]))
        self.port = int(ready["port"])
        return self

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()  # the server exits when its stdin closes
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- test API ------------------------------------------------------------------------
    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + self._base

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def reset(self, token: str | None = None) -> None:
        """Delete every resource, clear the request log, require `token` (None: no auth check)."""
        r = requests.post(f"{self.root_url}/$reset", json={"token": token}, timeout=10)
        r.raise_for_status()
        self._token = token

    def requests(self) -> list[dict[str, Any]]:
        """FHIR requests since the last reset: [{"method", "path", "authorization"}]."""
        r = requests.get(f"{self.root_url}/$requests", timeout=10)
        r.raise_for_status()
        return r.json()

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = "0") -> None:
        """Answer the next `count` FHIR requests with `status` (and Retry-After)."""
        body: dict[str, Any] = {"status": status, "count": count}
        if retry_after is not None:
            body["retryAfter"] = retry_after
        requests.post(f"{self.root_url}/$fail", json=body, timeout=10).raise_for_status()

    # -- SMART (smart=True) ---------------------------------------------------------------
    @property
    def issuer(self) -> str:
        return f"{self.root_url}/oauth"

    def launch(self, patient: str | None, app_context: str | None = None) -> str:
        """The EHR's launch context for an app it opens; returns the `launch` id."""
        r = requests.post(f"{self.root_url}/$launch", json={"patient": patient, "appContext": app_context}, timeout=10)
        r.raise_for_status()
        return str(r.json()["launch"])

    def expire(self, token: str) -> bool:
        """End this access token's lifetime now (as if its clock ran out)."""
        return requests.post(f"{self.root_url}/$expire", json={"token": token}, timeout=10).status_code == 200

    def revoke(self, token: str, client_id: str) -> None:
        """RFC 7009 revocation at the authorization server, as a public client does it."""
        r = requests.post(f"{self.issuer}/token/revocation", data={"token": token, "client_id": client_id,
                                                                    "token_type_hint": "access_token"}, timeout=10)
        r.raise_for_status()

    # -- conveniences for assertions -----------------------------------------------------
    def all_resources(self, resource_type: str) -> list[dict[str, Any]]:
        """Every resource of a type (follows next links; no auth)."""
        out: list[dict[str, Any]] = []
        url: str | None = f"{self.base_url}/{resource_type}?_count=1000"
        while url:
            doc = requests.get(url, timeout=30, headers=self._auth()).json()
            out += [e["resource"] for e in doc.get("entry", [])]
            url = next((link["url"] for link in doc.get("link", []) if link["relation"] == "next"), None)
        return out

    def snapshot(self, resource_types: list[str]) -> dict[str, str]:
        """"Type/id" -> meta.versionId of everything of these types."""
        return {f"{r['resourceType']}/{r['id']}": r["meta"]["versionId"]
                for t in resource_types for r in self.all_resources(t)}

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}
