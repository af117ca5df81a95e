"""The patient record for one hook call: prefetch first, then what is missing from the EHR.

Rules (CDS Hooks 2.0, "Prefetch Template"): a prefetch key that is absent, holds an
OperationOutcome, or a Bundle the client paginated (`next` link) is fetched from `fhirServer`
when the service may call it; a key whose value is null means "no data". When data the rules
need can be neither prefetched nor fetched the hook answers 412 (`DataUnavailable`).

Safety: a resource that belongs to another patient (its subject/patient reference names
someone else) is dropped, never evaluated; a prefetched Patient that is not the context's
patient is a malformed request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .fhir.client import FhirError
from .hooks.prefetch import PrefetchQuery

SourceKind = Literal["prefetch", "fetched", "empty"]


class MalformedPrefetch(ValueError):
    """The request's prefetch is not valid FHIR for its key (answer 400)."""


class DataUnavailable(RuntimeError):
    """Needed data could be neither prefetched nor fetched (answer 412)."""

    def __init__(self, keys: Sequence[str], reason: str) -> None:
        self.keys = list(keys)
        self.reason = reason
        super().__init__(f"{reason}: {', '.join(self.keys)}")


class Fetcher(Protocol):
    """Reads from the EHR's FHIR server (see cds.fhir.client)."""

    def read(self, path: str) -> dict[str, Any] | None: ...

    def search(self, path: str) -> list[dict[str, Any]]: ...


@dataclass
class Record:
    patient_id: str
    bundle: dict[str, Any]
    sources: dict[str, SourceKind] = field(default_factory=dict)
    dropped: int = 0

    @property
    def patient(self) -> dict[str, Any] | None:
        return next((e["resource"] for e in self.bundle["entry"] if e["resource"]["resourceType"] == "Patient"), None)


_PATIENT_REFS = ("subject", "patient")


def _belongs_to(resource: Mapping[str, Any], patient_id: str) -> bool:
    for key in _PATIENT_REFS:
        ref = resource.get(key)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            target = ref["reference"].rstrip("/").split("/")
            if len(target) >= 4 and target[-2] == "_history":  # Patient/x/_history/1
                target = target[:-2]
            return len(target) >= 2 and target[-2] == "Patient" and target[-1] == patient_id
    return True  # no patient reference: nothing says it is someone else's


def _shown(value: Any) -> str:
    """A client-supplied value in an error message: never echoed back whole."""
    text = str(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _list(value: Mapping[str, Any], field: str, where: str) -> list[Any]:
    items = value.get(field)
    if items is None:
        return []
    if not isinstance(items, list):
        raise MalformedPrefetch(f"{where}.{field} must be an array")
    return items


def _needs_fetch(key: str, value: Mapping[str, Any]) -> bool:
    if value.get("resourceType") == "OperationOutcome":
        return True
    if value.get("resourceType") == "Bundle":
        links = _list(value, "link", f"prefetch.{key}")
        return any(link.get("relation") == "next" for link in links if isinstance(link, Mapping))
    return False


def _resources_of(key: str, value: Mapping[str, Any], query: PrefetchQuery) -> list[dict[str, Any]]:
    rtype = value.get("resourceType")
    if not isinstance(rtype, str):
        raise MalformedPrefetch(f"prefetch.{key} is not a FHIR resource (no resourceType)")
    if query.is_read:
        if rtype != query.resource_type:
            raise MalformedPrefetch(f"prefetch.{key} must be a {query.resource_type}, got {_shown(rtype)}")
        return [dict(value)]
    if rtype != "Bundle":
        raise MalformedPrefetch(f"prefetch.{key} must be a searchset Bundle, got {_shown(rtype)}")
    out = []
    for i, entry in enumerate(_list(value, "entry", f"prefetch.{key}")):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
            raise MalformedPrefetch(f"prefetch.{key}.entry[{i}] has no resource")
        res = entry["resource"]
        search = entry.get("search")
        if (isinstance(search, Mapping) and search.get("mode") == "outcome") or res.get("resourceType") == "OperationOutcome":
            continue
        if res.get("resourceType") != query.resource_type:
            raise MalformedPrefetch(f"prefetch.{key}.entry[{i}] is a {_shown(res.get('resourceType'))}, "
                                   f"expected {query.resource_type}")
        if not isinstance(res.get("id"), str):
            raise MalformedPrefetch(f"prefetch.{key}.entry[{i}] has no id")
        out.append(dict(res))
    return out


def assemble_record(
    patient_id: str,
    queries: Sequence[PrefetchQuery],
    prefetch: Mapping[str, Any] | None,
    fetcher: Fetcher | None,
) -> Record:
    """Build the patient's record; raise MalformedPrefetch (400) or DataUnavailable (412)."""
    prefetch = prefetch or {}
    sources: dict[str, SourceKind] = {}
    gathered: list[dict[str, Any]] = []
    to_fetch: list[PrefetchQuery] = []
    for q in queries:
        if q.key not in prefetch:
            to_fetch.append(q)
            continue
        value = prefetch[q.key]
        if value is None:
            if q.resource_type == "Patient":
                raise DataUnavailable([q.key], "the CDS client has no Patient for context.patientId")
            sources[q.key] = "empty"
            continue
        if not isinstance(value, Mapping):
            raise MalformedPrefetch(f"prefetch.{q.key} must be a JSON object or null")
        if _needs_fetch(q.key, value):
            to_fetch.append(q)
            continue
        gathered.extend(_resources_of(q.key, value, q))
        sources[q.key] = "prefetch"
    if to_fetch:
        if fetcher is None:
            raise DataUnavailable([q.key for q in to_fetch], "not prefetched and the FHIR server cannot be used")
        for q in to_fetch:
            try:
                if q.is_read:
                    res = fetcher.read(q.url(patient_id))
                    if res is None:
                        raise DataUnavailable([q.key], "the FHIR server has no such Patient")
                    found = _resources_of(q.key, res, q)
                else:
                    found = _resources_of(q.key, {"resourceType": "Bundle", "entry": [
                        {"resource": r} for r in fetcher.search(q.url(patient_id))]}, q)
            except FhirError as exc:
                raise DataUnavailable([q.key], str(exc)) from None
            except MalformedPrefetch as exc:
                raise DataUnavailable([q.key], f"the FHIR server sent unusable data ({exc})") from None
            gathered.extend(found)
            sources[q.key] = "fetched"
    return _record(patient_id, gathered, sources)


def _record(patient_id: str, resources: list[dict[str, Any]], sources: dict[str, SourceKind]) -> Record:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    dropped = 0
    for res in resources:
        if res["resourceType"] == "Patient":
            if res.get("id") != patient_id:
                raise MalformedPrefetch(f"the Patient provided is Patient/{_shown(res.get('id'))}, "
                                       f"context.patientId is {patient_id}")
        elif not _belongs_to(res, patient_id):
            dropped += 1
            continue
        seen.setdefault((res["resourceType"], str(res.get("id"))), res)
    patients = [r for (t, _), r in seen.items() if t == "Patient"]
    if not patients:
        raise DataUnavailable(["patient"], "no Patient resource")
    ordered = patients + [r for (t, _), r in seen.items() if t != "Patient"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in ordered]}
    return Record(patient_id, bundle, sources, dropped)
