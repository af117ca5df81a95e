"""Read the trial catalogue from a FHIR server: active ResearchStudies, their Groups, Libraries.

The server holds exactly what `trial-cds publish` (or any FHIR client) put there; this reads
it back through standard searches, so a trial added on the server appears at the next load.
Libraries are followed through `depends-on` (a trial's rules need SLECommon and FHIRHelpers).
The catalogue's screening Library (SLEScreen, which defines "In Catalogue Population") is not
referenced by any Group, so it is read by its canonical URL; when the server lacks it the
service runs without the screening gate (slower for patients without SLE, same cards).
The ValueSets the Libraries depend on are read by canonical URL (every version: a site adds
its local codes by publishing a newer one). CQL-only Libraries (no ELM) are compiled here with the official translator. A Library that
cannot be read or compiled is reported in `Catalogue.problems` and its trial is skipped; the
other trials load. A server that cannot be searched at all raises FhirError.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from typing import Any
from urllib.parse import quote

from ..bundles import BASE
from ..catalogue import Catalogue
from .client import FhirClient, FhirError

log = logging.getLogger(__name__)

SCREEN_LIBRARY_URL = f"{BASE}/Library/SLEScreen"

_LIBRARY = re.compile(r'^\s*library\s+(?:"([^"]+)"|([A-Za-z_][A-Za-z0-9_]*))', re.MULTILINE)


def catalogue_from_server(base_url: str, *, token: str | None = None, timeout: float = 10.0,
                          screen_library: str | None = SCREEN_LIBRARY_URL) -> Catalogue:
    client = FhirClient(base_url, token, timeout=timeout, budget=max(60.0, timeout * 6), page_cap=50)
    try:
        return _load(client, screen_library)
    finally:
        client.close()


def _load(client: FhirClient, screen_library: str | None) -> Catalogue:
    problems: list[str] = []
    studies = client.search("ResearchStudy?status=active&_count=100")
    resources: list[dict[str, Any]] = list(studies)
    wanted_libraries: set[str] = set()
    for study in studies:
        for ref in study.get("enrollment") or []:
            target = str(ref.get("reference", ""))
            if target.startswith("Group/"):
                try:
                    group = client.read(target)
                except FhirError as exc:
                    problems.append(f"{target}: {exc}")
                    continue
                if group is not None:
                    resources.append(group)
                    for ch in group.get("characteristic") or []:
                        for ext in ch.get("extension") or []:
                            ref_url = (ext.get("valueExpression") or {}).get("reference")
                            if ref_url:
                                wanted_libraries.add(ref_url)
    seen: set[str] = set()
    todo = sorted(wanted_libraries, reverse=True)
    optional: set[str] = set()
    if screen_library and screen_library not in wanted_libraries:
        todo.insert(0, screen_library)  # popped last
        optional.add(screen_library)
    libraries: list[dict[str, Any]] = []
    value_set_urls: list[str] = []
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        try:
            found = client.search(f"Library?url={quote(url, safe='')}")
        except FhirError as exc:
            problems.append(f"Library {url}: {exc}")
            continue
        if not found:
            if url not in optional:
                problems.append(f"Library {url}: not on the server")
            else:
                log.info("no screening Library %s on the server; running without the screening gate", url)
            continue
        # Several versions under one canonical URL: prefer an active one, then the highest version.
        found.sort(key=lambda r: (r.get("status") == "active", _version_key(r.get("version"))), reverse=True)
        lib = found[0]
        libraries.append(lib)
        for art in lib.get("relatedArtifact") or []:
            if art.get("type") == "depends-on" and art.get("resource"):
                target = str(art["resource"])
                if "/ValueSet/" not in target:
                    todo.append(target)
                elif target not in value_set_urls:
                    value_set_urls.append(target)
    compiled = _compile_cql_only(libraries, problems)
    for lib in compiled:
        value_set_urls.extend(u for u in _elm_value_sets(lib) if u not in value_set_urls)
    value_sets = _value_sets(client, value_set_urls, problems)
    catalogue = Catalogue.from_resources(resources + compiled + value_sets)
    catalogue.problems[:0] = problems
    return catalogue


def _elm_value_sets(lib: dict[str, Any]) -> list[str]:
    """Value set URLs an (ELM-carrying) Library declares, for Libraries that list no depends-on."""
    for content in lib.get("content") or []:
        if content.get("contentType") == "application/elm+json" and content.get("data"):
            try:
                elm = json.loads(base64.b64decode(content["data"]))
                return [str(d["id"]) for d in ((elm.get("library") or {}).get("valueSets") or {}).get("def") or []]
            except (ValueError, KeyError, TypeError):
                return []
    return []


def _value_sets(client: FhirClient, urls: list[str], problems: list[str]) -> list[dict[str, Any]]:
    """Every version of each value set (the catalogue picks one), and the value sets they include.

    Searched by canonical URL in batches (`url=a,b,c` is an OR search); a site publishes its
    local codes as a newer version under the same URL."""
    found: dict[str, list[dict[str, Any]]] = {}
    todo = list(dict.fromkeys(urls))
    seen: set[str] = set()
    while todo:
        batch = [u for u in todo[:20] if u not in seen]
        todo = todo[20:]
        if not batch:
            continue
        seen.update(batch)
        try:
            got = client.search("ValueSet?url=" + ",".join(quote(u, safe="") for u in batch) + "&_count=200")
        except FhirError as exc:
            problems.append(f"ValueSet search: {exc}")
            continue
        for vs in got:
            found.setdefault(str(vs.get("url")), []).append(vs)
            for inc in (vs.get("compose") or {}).get("include") or []:
                todo.extend(u for u in inc.get("valueSet") or [] if u not in seen)
        for url in batch:
            if url not in found:
                problems.append(f"ValueSet {url}: not on the server")
    return [vs for versions in found.values() for vs in versions]


def _version_key(version: Any) -> tuple[Any, ...]:
    parts = str(version or "").split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def _compile_cql_only(libraries: list[dict[str, Any]], problems: list[str]) -> list[dict[str, Any]]:
    """Libraries as given, except CQL-only ones, which get ELM from the translator."""
    from ..engine.translator import Translator

    needs = [lib for lib in libraries
             if not any(c.get("contentType") == "application/elm+json" and c.get("data") for c in lib.get("content") or [])]
    if not needs:
        return libraries
    sources: dict[str, str] = {}
    for lib in libraries:
        cql = next((c for c in lib.get("content") or [] if c.get("contentType") == "text/cql" and c.get("data")), None)
        if cql is not None:
            try:
                text = base64.b64decode(cql["data"]).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                problems.append(f"Library/{lib.get('id')}: CQL content is not base64 UTF-8")
                continue
            header = _LIBRARY.search(text)
            if header:
                sources[header.group(1) or header.group(2)] = text
    out = [lib for lib in libraries if lib not in needs]
    with Translator() as translator:
        for lib in needs:
            cql = next((c for c in lib.get("content") or [] if c.get("contentType") == "text/cql" and c.get("data")), None)
            if cql is None:
                problems.append(f"Library/{lib.get('id')}: neither ELM nor CQL content")
                continue
            try:
                text = base64.b64decode(cql["data"]).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
            result = translator.translate(text, sources)
            if not result.ok:
                problems.append(f"Library/{lib.get('id')}: CQL does not translate: "
                                + "; ".join(m.format(None) for m in result.errors[:3]))
                continue
            elm = base64.b64encode(json.dumps(result.elm).encode("utf-8")).decode("ascii")
            out.append({**lib, "content": [*(lib.get("content") or []), {"contentType": "application/elm+json", "data": elm}]})
    return out
