"""Publishing test data into a namespace of its own on a shared FHIR server, and removing it again.

Every resource gets the id prefix `tcds-<run>-` (references rewritten to match) and the tag
`https://trial-cds.dev/test-run|<run>`, so runs never collide with each other or with anyone
else's data on a public sandbox, and what a run created can be found and deleted.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterable
from typing import Any

import requests

from cds.publish import Publisher, Report, Source

TAG_SYSTEM = "https://trial-cds.dev/test-run"


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]


def prefix_for(run_id: str) -> str:
    return f"tcds-{run_id}-"


def _rewrite_refs(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (refs.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite_refs(v, refs))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_refs(v, refs) for v in value]
    return value


def namespaced(sources: Iterable[Source], run_id: str) -> list[Source]:
    """Copies of the sources with prefixed ids, rewritten `Type/id` references and the run's tag."""
    sources = list(sources)
    prefix = prefix_for(run_id)
    refs = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/{prefix}{r['id']}"
            for s in sources for r in s.resources}
    out = []
    for src in sources:
        resources = []
        for r in src.resources:
            new = _rewrite_refs(copy.deepcopy(r), refs)
            new["id"] = prefix + r["id"]
            meta = new.setdefault("meta", {})
            meta["tag"] = [t for t in meta.get("tag", []) if t.get("system") != TAG_SYSTEM] + [
                {"system": TAG_SYSTEM, "code": run_id, "display": "trial-cds test run (deleted at the end)"}]
            resources.append(new)
        out.append(Source(f"{src.name} [{run_id}]", resources))
    return out


def keys_of(sources: Iterable[Source]) -> list[str]:
    return [f"{r['resourceType']}/{r['id']}" for s in sources for r in s.resources]


def publish(base_url: str, sources: list[Source], token: str | None = None) -> Report:
    report = Publisher(base_url, token).publish(sources)
    if report.failure is not None:
        f = report.failure
        raise AssertionError(f"publishing to {base_url} failed at transaction {f.index} (HTTP {f.status}): "
                             + "; ".join(f"{e.key}: {e.message}" for e in f.errors))
    return report


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def delete_all(base_url: str, keys: list[str], token: str | None = None) -> list[str]:
    """DELETE every `Type/id`, last written first (so nothing still references what goes).

    Returns what could not be deleted; 404/410 (never written, already gone) count as deleted.
    """
    base = base_url.rstrip("/")
    problems = []
    with requests.Session() as http:
        for key in reversed(keys):
            try:
                resp = http.delete(f"{base}/{key}", headers=_headers(token), timeout=60)
            except requests.RequestException as exc:
                problems.append(f"{key}: {exc.__class__.__name__}")
                continue
            if resp.status_code not in (200, 202, 204, 404, 410):
                problems.append(f"{key}: HTTP {resp.status_code} {resp.text[:200]}")
    return problems


def still_there(base_url: str, keys: list[str], token: str | None = None) -> list[str]:
    """The keys a plain read still returns (deleted resources answer 404 or 410)."""
    base = base_url.rstrip("/")
    with requests.Session() as http:
        return [k for k in keys
                if http.get(f"{base}/{k}", headers=_headers(token), timeout=60).status_code == 200]


def strip_prefix(value: Any, prefix: str) -> Any:
    """`value` with the namespace prefix removed from every string (to compare with local results)."""
    return json.loads(json.dumps(value).replace(prefix, ""))
