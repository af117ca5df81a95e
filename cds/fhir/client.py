"""A small FHIR REST client on `requests`, for reading a patient's record from the EHR.

Why not a FHIR client library: the ones on PyPI (fhirclient, fhirpy) either target SMART app
launch flows or are async-only, and none enforces what matters here: a bearer token goes only
to the server it was issued for (allowlist, no redirects, `next` links must stay on that
server), every call has a timeout, all calls of one hook share a time budget, 429/503 are
retried honouring Retry-After inside that budget, and paging stops at a cap rather than
evaluating a partial record.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import requests

from ..net.http import BodyBroken, BodyDeadline, BodyTooLarge, read_body, retry_after, shared_session
from ..net.urls import HttpUrl, UnsafeUrl, parse_http_url

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 503}
PAGE_SIZE = 100
MAX_TRIES = 3
MAX_BODY_BYTES = 64 * 1_000_000  # one page of a patient's search; more is a broken or hostile server


@dataclass(frozen=True)
class _Reply:
    status_code: int
    body: bytes


class FhirError(RuntimeError):
    """The FHIR server could not give the data (the message says why; never the token)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FhirTimeout(FhirError):
    pass


class FhirAuthError(FhirError):
    pass


class FhirClient:
    """Reads from one FHIR base URL with one token, within one time budget."""

    def __init__(self, base_url: HttpUrl | str, token: str | None, *, timeout: float = 5.0, budget: float = 15.0,
                 page_cap: int = 20, session: requests.Session | None = None) -> None:
        """`base_url` must pass the URL policy (cds.net.urls); the token goes to nothing outside it."""
        base = base_url if isinstance(base_url, HttpUrl) else parse_http_url(base_url)
        self.base = HttpUrl(base.scheme, base.host, base.port, base.path.rstrip("/") + "/", None)
        self._token = token
        self.timeout = timeout
        self.deadline = time.monotonic() + budget
        self.budget = budget
        self.page_cap = page_cap
        self.session = session or shared_session()
        self.requests_made = 0

    def __repr__(self) -> str:
        return f"FhirClient({self.base!r}, token={'<redacted>' if self._token else None})"

    def close(self) -> None:
        self._token = None

    def _remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _resolve(self, reference: str) -> HttpUrl:
        """A path or link, resolved against the base and checked: it must stay under the base."""
        try:
            url = self.base.join(reference)
        except UnsafeUrl as exc:
            raise FhirError(f"refusing a URL the policy does not accept ({exc})") from None
        if not url.under(self.base):
            raise FhirError("refusing to follow a URL outside the FHIR server it was given")
        return url

    def _get(self, url: HttpUrl) -> _Reply:
        headers = {"Accept": "application/fhir+json, application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        path = url.path
        for attempt in range(1, MAX_TRIES + 1):
            remaining = self._remaining()
            if remaining <= 0:
                raise FhirTimeout(f"FHIR server did not answer within the {self.budget:g} s budget")
            try:
                self.requests_made += 1
                resp = self.session.get(str(url), headers=headers, timeout=min(self.timeout, remaining),
                                        allow_redirects=False, stream=True)
            except requests.Timeout:
                raise FhirTimeout(f"FHIR server timed out ({path})") from None
            except requests.RequestException as exc:
                raise FhirError(f"FHIR server unreachable ({exc.__class__.__name__})") from None
            try:
                if resp.status_code in RETRY_STATUSES and attempt < MAX_TRIES:
                    wait = retry_after(resp.headers.get("Retry-After"))
                    wait = 0.5 * attempt if wait is None else wait
                    if wait >= self._remaining():
                        raise FhirError(f"FHIR server busy (HTTP {resp.status_code}) beyond the time budget",
                                        resp.status_code)
                else:
                    return _Reply(resp.status_code, self._body(resp, path))
            finally:
                resp.close()
            time.sleep(wait)
        raise FhirError("FHIR server kept refusing", None)  # pragma: no cover - loop returns or raises

    def _body(self, resp: requests.Response, path: str) -> bytes:
        """The whole body, read within the hook's budget and size cap."""
        try:
            return read_body(resp, max_bytes=MAX_BODY_BYTES, deadline=self.deadline)
        except BodyTooLarge:
            raise FhirError(f"FHIR server sent more than {MAX_BODY_BYTES // 1_000_000} MB for {path}") from None
        except BodyDeadline as exc:
            raise FhirTimeout(f"FHIR server did not finish answering {path} within the {self.budget:g} s budget "
                              f"({exc})") from None
        except BodyBroken as exc:
            raise FhirError(f"FHIR server response was cut off or corrupt ({path}: {exc})") from None

    def _json(self, resp: _Reply, what: str) -> dict[str, Any]:
        if resp.status_code in (401, 403):
            raise FhirAuthError(f"FHIR server refused the access token (HTTP {resp.status_code}) for {what}", resp.status_code)
        if 300 <= resp.status_code < 400:
            raise FhirError(f"FHIR server redirected {what} (HTTP {resp.status_code}); redirects are not followed", resp.status_code)
        if resp.status_code >= 400:
            raise FhirError(f"FHIR server answered HTTP {resp.status_code} for {what}", resp.status_code)
        try:
            doc = json.loads(resp.body)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise FhirError(f"FHIR server sent a body that is not JSON for {what}", resp.status_code) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            raise FhirError(f"FHIR server sent JSON that is not a FHIR resource for {what}", resp.status_code)
        return doc

    def read(self, path: str) -> dict[str, Any] | None:
        """GET one resource; None when the server says it does not exist (404/410)."""
        resp = self._get(self._resolve(path))
        if resp.status_code in (404, 410):
            return None
        doc = self._json(resp, path.split("?")[0])
        if doc["resourceType"] == "OperationOutcome":
            raise FhirError(f"FHIR server answered an OperationOutcome for {path.split('?')[0]}")
        return doc

    def search(self, path: str) -> list[dict[str, Any]]:
        """Every resource of a search, following `next` links (up to the page cap).

        Asks for pages of PAGE_SIZE (servers default to ~20) unless the query sets `_count`:
        each page is a round trip inside the hook's time budget.
        """
        if "_count=" not in path:
            path += ("&" if "?" in path else "?") + f"_count={PAGE_SIZE}"
        url: HttpUrl | None = self._resolve(path)
        what = path.split("?")[0] + " search"
        out: list[dict[str, Any]] = []
        pages = 0
        while url:
            pages += 1
            if pages > self.page_cap:
                raise FhirError(f"{what} has more than {self.page_cap} pages; not evaluating a partial record")
            doc = self._json(self._get(url), what)
            if doc["resourceType"] != "Bundle":
                raise FhirError(f"{what} did not return a Bundle ({doc['resourceType']})")
            entries, links = doc.get("entry") or [], doc.get("link") or []
            if not isinstance(entries, list) or not isinstance(links, list):
                raise FhirError(f"{what} returned a malformed Bundle (entry and link must be arrays)")
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                search = entry.get("search")
                if isinstance(search, dict) and search.get("mode") == "outcome":
                    continue
                res = entry.get("resource")
                if isinstance(res, dict) and res.get("resourceType") != "OperationOutcome":
                    out.append(res)
            nxt = next((link.get("url") for link in links
                        if isinstance(link, dict) and link.get("relation") == "next"), None)
            if nxt is not None and not isinstance(nxt, str):
                raise FhirError(f"{what} returned a malformed next link")
            url = self._resolve(nxt) if nxt else None
        return out
