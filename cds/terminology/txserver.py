"""Expanding intensional SNOMED CT definitions on a FHIR terminology server (optional).

Why: no licence-free SNOMED CT release can ship with the catalogue, so the committed
expansions hold curated concepts. When `TRIAL_CDS_TERMINOLOGY_URL` names a FHIR terminology
server, each value set whose compose has SNOMED CT `is-a` filters is sent to `ValueSet/$expand`
(just those includes, the ValueSet inline, so the server need not know our canonical URLs),
and the descendants it returns are added to the committed expansion: a record coded with any
descendant is then recognised. Expansions are cached per process (by URL, version and
definition), so a reload does not ask again. A failed expansion keeps the committed one; the
failure is logged and recorded in `Catalogue.terminology` and `problems`, which /readyz shows.

URL handling is deliberately strict (a configured URL, never one from a request): http(s)
only, no userinfo, no backslashes or control characters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import requests

from ..fhir.systems import SNOMEDCT
from ..net.http import FetchFailed, fetch_json, new_session
from ..net.urls import UnsafeUrl, parse_http_url
from .codeservice import Code, ValueSetExpansion, _unique

MAX_EXPANSION_BYTES = 32 * 1_000_000  # one value set's expansion; more is a broken server

log = logging.getLogger(__name__)

MAX_CODES = 20000

_cache: dict[str, tuple[Code, ...]] = {}
_cache_lock = threading.Lock()


class TerminologyError(RuntimeError):
    """The terminology server could not expand a value set."""


def check_url(url: str) -> str:
    """The base URL without a trailing slash, as the URL policy (cds.net.urls) rebuilds it;
    ValueError (UnsafeUrl) when the policy refuses it or it carries a query."""
    parsed = parse_http_url(url)
    if parsed.query is not None:
        raise UnsafeUrl("terminology server URL must not carry a query")
    return str(parsed).rstrip("/")


def snomed_filters(resource: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The SNOMED CT includes of a ValueSet's compose that a server must expand (filters)."""
    return [dict(inc) for inc in (resource.get("compose") or {}).get("include") or []
            if inc.get("system") == SNOMEDCT and inc.get("filter")]


def _cache_key(vs: ValueSetExpansion, includes: list[dict[str, Any]], base: str) -> str:
    text = json.dumps([base, vs.url, vs.version, includes], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def expand_snomed(base: str, vs: ValueSetExpansion, includes: list[dict[str, Any]], *,
                  timeout: float = 10.0, session: requests.Session | None = None) -> tuple[Code, ...]:
    """The codes the server gives for `includes` (cached); raises TerminologyError."""
    key = _cache_key(vs, includes, base)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active", "url": vs.url,
                                              "version": vs.version, "compose": {"include": includes}}},
            {"name": "count", "valueInteger": MAX_CODES},
        ],
    }
    try:
        doc = fetch_json(f"{base}/ValueSet/$expand", method="POST", body=body, session=session,
                         max_bytes=MAX_EXPANSION_BYTES, timeout=timeout, deadline=time.monotonic() + timeout * 3,
                         headers={"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"})
    except FetchFailed as exc:
        raise TerminologyError(f"$expand: {exc}") from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "ValueSet":
        raise TerminologyError("$expand did not answer with a ValueSet")
    expansion = doc.get("expansion") or {}
    contains = expansion.get("contains")
    if not isinstance(contains, list):
        raise TerminologyError("$expand answered without expansion.contains")
    total = expansion.get("total")
    if isinstance(total, int) and total > len(contains):
        raise TerminologyError(f"$expand returned {len(contains)} of {total} codes (paged expansions are not read)")
    codes = tuple(Code(str(c["system"]), str(c["code"]), c.get("display"))
                  for c in _walk(contains) if c.get("system") == SNOMEDCT and c.get("code"))
    with _cache_lock:
        _cache[key] = codes
    return codes


def _walk(items: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in items:
        if isinstance(c, dict):
            if not c.get("abstract") and not c.get("inactive"):
                out.append(c)
            out += _walk(c.get("contains") or [])
    return out


def apply_terminology_server(value_sets: Mapping[str, ValueSetExpansion], base_url: str, *,
                             timeout: float = 10.0) -> tuple[dict[str, ValueSetExpansion], dict[str, str], list[str]]:
    """Value sets with the server's SNOMED CT descendants added; status per expanded value
    set ("terminology server" or "committed expansion: <why>"); problems to report."""
    base = check_url(base_url)
    out = dict(value_sets)
    status: dict[str, str] = {}
    problems: list[str] = []
    with new_session(pool_maxsize=2) as session:
        for url, vs in value_sets.items():
            includes = snomed_filters(vs.resource or {})
            if not includes:
                continue
            try:
                extra = expand_snomed(base, vs, includes, timeout=timeout, session=session)
            except TerminologyError as exc:
                status[url] = f"committed expansion (terminology server failed: {exc})"
                problems.append(f"ValueSet {url}: terminology server expansion failed, using the committed expansion ({exc})")
                log.warning("terminology: %s: $expand failed, keeping the committed expansion: %s", url, exc)
                continue
            codes = tuple(_unique([*vs.codes, *extra]))
            out[url] = replace(vs, codes=codes, own=tuple(_unique([*vs.own, *extra])), source="terminology-server")
            status[url] = f"terminology server ({len(codes) - len(vs.codes)} codes added)"
    from .codeservice import recompose

    return recompose(out), status, problems


def with_terminology_server(catalogue: Any, base_url: str | None, *, timeout: float = 10.0) -> Any:
    """The catalogue with its value sets expanded on `base_url` (when set); failures recorded."""
    if not base_url:
        catalogue.terminology = {"source": "committed expansions"}
        return catalogue
    try:
        value_sets, status, problems = apply_terminology_server(catalogue.value_sets, base_url, timeout=timeout)
    except ValueError as exc:
        catalogue.problems.append(f"TRIAL_CDS_TERMINOLOGY_URL: {exc}; using the committed expansions")
        catalogue.terminology = {"source": "committed expansions", "error": str(exc)}
        log.warning("terminology: %s; using the committed expansions", exc)
        return catalogue
    catalogue.value_sets = value_sets
    catalogue.problems.extend(problems)
    catalogue.terminology = {"source": "terminology server", "server": check_url(base_url), "valueSets": status}
    return catalogue
