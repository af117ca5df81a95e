"""The patient record for one hook call: prefetch first, then what is missing from the EHR.

Rules (CDS Hooks 2.0, "Prefetch Template"): a prefetch key that is absent, holds an
OperationOutcome, or a Bundle the client paginated (`next` link) is fetched from `fhirServer`
when the service may call it; a key whose value is null means "no data". When data the rules
need can be neither prefetched nor fetched the hook answers 412 (`DataUnavailable`).

Safety: a resource is evaluated only when it references the context patient by a well-formed
reference in its patient field (`subject`, or `patient` for Immunization and the like): a
relative `Patient/<id>` (optionally `/_history/<v>`), or an absolute URL of that Patient on
the hook's own `fhirServer`. Anything else (another patient, a plain string, an array, an
identifier-only or missing reference, a URL on another server) is dropped and counted; a
prefetched Patient that is not the context's patient is a malformed request.

Admission: a record with more resources than the engine evaluates within its budget
(`Limits`) is refused whole (413 when the client sent it, 412 when the EHR did), never
evaluated in part and never allowed to take the CQL workers down.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .fhir.client import FhirError
from .hooks.prefetch import PrefetchQuery
from .net.urls import HttpUrl, UnsafeUrl, parse_http_url

SourceKind = Literal["prefetch", "fetched", "empty"]


class MalformedPrefetch(ValueError):
    """The request's prefetch is not valid FHIR for its key (answer 400)."""


class DataUnavailable(RuntimeError):
    """Needed data could be neither prefetched nor fetched (answer 412)."""

    def __init__(self, keys: Sequence[str], reason: str) -> None:
        self.keys = list(keys)
        self.reason = reason
        super().__init__(f"{reason}: {', '.join(self.keys)}")


class RecordTooLarge(ValueError):
    """More resources than the engine evaluates within its budget; `source` says who sent them."""

    def __init__(self, message: str, source: Literal["prefetch", "fetched"]) -> None:
        super().__init__(message)
        self.source = source


@dataclass(frozen=True)
class Limits:
    """Most resources per record and per resource type (TRIAL_CDS_MAX_RECORD_RESOURCES, ...)."""

    per_record: int = 5000
    per_type: int = 3000


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


# The element that names the patient, per resource type (FHIR R4); other types: the first present.
PATIENT_FIELD = {"Immunization": "patient", "AllergyIntolerance": "patient", "Coverage": "beneficiary"}
_RELATIVE = re.compile(r"^Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?\Z")


def references_patient(resource: Mapping[str, Any], patient_id: str, fhir_server: HttpUrl | None) -> bool:
    """Does the resource's patient field reference `patient_id` by a well-formed reference?"""
    field_name = PATIENT_FIELD.get(str(resource.get("resourceType")))
    if field_name is None:
        field_name = next((k for k in ("subject", "patient") if k in resource), "subject")
    ref = resource.get(field_name)
    if not isinstance(ref, Mapping):
        return False
    target = ref.get("reference")
    kind = ref.get("type")
    if not isinstance(target, str) or (kind is not None and kind != "Patient"):
        return False
    match = _RELATIVE.match(target)
    if match:
        return match.group(1) == patient_id
    if fhir_server is None or not target.startswith(("http://", "https://")):
        return False
    try:
        url = parse_http_url(target)
    except UnsafeUrl:
        return False
    base = fhir_server.path.rstrip("/")
    if url.query is not None or url.origin != fhir_server.origin or not url.path.startswith(base + "/"):
        return False
    match = _RELATIVE.match(url.path[len(base) + 1:])
    return match is not None and match.group(1) == patient_id


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


def _check_limits(resources: Sequence[Mapping[str, Any]], limits: Limits,
                  source: Literal["prefetch", "fetched"]) -> None:
    if len(resources) > limits.per_record:
        raise RecordTooLarge(f"{len(resources)} resources, more than the {limits.per_record} the rules evaluate "
                             "within their time budget", source)
    counts: dict[str, int] = {}
    for res in resources:
        rtype = str(res.get("resourceType"))
        counts[rtype] = counts.get(rtype, 0) + 1
    for rtype, n in counts.items():
        if n > limits.per_type:
            raise RecordTooLarge(f"{n} {_shown(rtype)} resources, more than the {limits.per_type} per type the "
                                 "rules evaluate within their time budget", source)


def assemble_record(
    patient_id: str,
    queries: Sequence[PrefetchQuery],
    prefetch: Mapping[str, Any] | None,
    fetcher: Fetcher | None,
    *,
    fhir_server: HttpUrl | None = None,
    limits: Limits | None = None,
) -> Record:
    """Build the patient's record; raise MalformedPrefetch (400), RecordTooLarge (413/412) or
    DataUnavailable (412). `fhir_server` is the hook's server: absolute references on it count."""
    limits = limits or Limits()
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
    _check_limits(gathered, limits, "prefetch")
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
            _check_limits(gathered, limits, "fetched")
    return _record(patient_id, gathered, sources, fhir_server)


def _record(patient_id: str, resources: list[dict[str, Any]], sources: dict[str, SourceKind],
            fhir_server: HttpUrl | None) -> Record:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    dropped = 0
    for res in resources:
        if res["resourceType"] == "Patient":
            if res.get("id") != patient_id:
                raise MalformedPrefetch(f"the Patient provided is Patient/{_shown(res.get('id'))}, "
                                       f"context.patientId is {patient_id}")
        elif not references_patient(res, patient_id, fhir_server):
            dropped += 1
            continue
        seen.setdefault((res["resourceType"], str(res.get("id"))), res)
    patients = [r for (t, _), r in seen.items() if t == "Patient"]
    if not patients:
        raise DataUnavailable(["patient"], "no Patient resource")
    ordered = patients + [r for (t, _), r in seen.items() if t != "Patient"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in ordered]}
    return Record(patient_id, bundle, sources, dropped)
