"""Answer prefetch templates from a patient Bundle, as an EHR would (demo and tests).

Only what the service's own templates use: a Patient read, and type-level searches by
`patient=` with an optional token parameter (`code=` / `vaccine-code=`, `system|code,...`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..hooks.prefetch import PrefetchQuery

CODE_PATHS = {"code": ("code", "medicationCodeableConcept"), "vaccine-code": ("vaccineCode",)}


def _codings(resource: Mapping[str, Any], paths: Iterable[str]) -> set[tuple[str, str]]:
    out = set()
    for path in paths:
        concept = resource.get(path)
        if isinstance(concept, Mapping):
            out |= {(c.get("system", ""), c.get("code", "")) for c in concept.get("coding") or []}
    return out


def search(resources: Iterable[Mapping[str, Any]], url: str) -> list[dict[str, Any]]:
    """Resources matching a `Type?patient=..&code=sys|code,...` query."""
    parts = urlsplit(url)
    rtype = parts.path.rsplit("/", 1)[-1]
    params = dict(parse_qsl(parts.query))
    pid = params.get("patient") or params.get("subject", "").removeprefix("Patient/")
    out = []
    for r in resources:
        if r.get("resourceType") != rtype:
            continue
        ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
        if pid and ref.rsplit("/", 1)[-1] != pid:
            continue
        for param, paths in CODE_PATHS.items():
            if param in params:
                wanted = {tuple(tok.split("|", 1)) if "|" in tok else ("", tok) for tok in params[param].split(",")}
                if not any((s, c) in wanted or ("", c) in wanted for s, c in _codings(r, paths)):
                    break
        else:
            out.append(dict(r))
    return out


def prefetch_for(bundle: Mapping[str, Any], queries: Iterable[PrefetchQuery], patient_id: str) -> dict[str, Any]:
    """The `prefetch` object a CDS client would send for this patient."""
    resources = [e["resource"] for e in bundle.get("entry") or []]
    out: dict[str, Any] = {}
    for q in queries:
        if q.is_read:
            out[q.key] = next((r for r in resources if r.get("resourceType") == q.resource_type and r.get("id") == patient_id), None)
        else:
            matches = search(resources, q.url(patient_id))
            out[q.key] = {"resourceType": "Bundle", "type": "searchset", "total": len(matches),
                          "entry": [{"fullUrl": f"{q.resource_type}/{r['id']}", "resource": r} for r in matches]}
    return out
