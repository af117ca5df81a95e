"""Prefetch templates derived from what the catalogue's ELM retrieves.

Why derived: the engine only reads what its retrieves ask for, so the ELM's data requirements
(resource types and, where static, codes) are the exact minimum a CDS client must send; a
hand-kept list would drift from the rules. The same queries drive fetching from `fhirServer`
when the client did not prefetch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..engine.elm import CodeKey, TypeRequirement, data_requirements

PATIENT_TOKEN = "{{context.patientId}}"
# Keep each query well under common URL limits (8 KB) even after percent-encoding.
MAX_QUERY_CHARS = 3500

# The search parameter that ties each resource type to the patient.
PATIENT_PARAM = {
    "Immunization": "patient",
    "Observation": "patient",
    "Condition": "patient",
    "Procedure": "patient",
    "MedicationRequest": "patient",
    "MedicationStatement": "patient",
    "AllergyIntolerance": "patient",
    "Encounter": "patient",
    "DiagnosticReport": "patient",
}

# The token search parameter over each type's retrieve code path.
CODE_PARAM = {"Immunization": "vaccine-code"}


@dataclass(frozen=True)
class PrefetchQuery:
    """One prefetch key: `template` holds the {{context.patientId}} token."""

    key: str
    resource_type: str
    template: str

    def url(self, patient_id: str) -> str:
        return self.template.replace(PATIENT_TOKEN, patient_id)

    @property
    def is_read(self) -> bool:
        return "?" not in self.template


def _chunks(codes: list[CodeKey], prefix: str) -> list[list[CodeKey]]:
    chunks: list[list[CodeKey]] = [[]]
    size = len(prefix)
    for c in codes:
        token = len(c.system) + len(c.code) + 2
        if chunks[-1] and size + token > MAX_QUERY_CHARS:
            chunks.append([])
            size = len(prefix)
        chunks[-1].append(c)
        size += token
    return chunks


def prefetch_queries(libraries: Mapping[str, Mapping[str, Any]], names: list[str],
                     value_sets: Mapping[str, Any] | None = None) -> list[PrefetchQuery]:
    """The Patient read plus one search (or a few, when the code list is long) per type.

    `value_sets` (canonical URL -> terminology.ValueSetExpansion) resolves retrieves filtered
    by a value set to its codes; without it such a retrieve asks for every resource of its type."""
    vs_codes = {url: [(c.system, c.code) for c in vs.codes] for url, vs in (value_sets or {}).items()}
    reqs: dict[str, TypeRequirement] = data_requirements(names, libraries, vs_codes)
    queries = [PrefetchQuery("patient", "Patient", f"Patient/{PATIENT_TOKEN}")]
    for rtype in sorted(reqs):
        if rtype == "Patient":
            continue
        req = reqs[rtype]
        param = PATIENT_PARAM.get(rtype, "patient")
        base = f"{rtype}?{param}={PATIENT_TOKEN}"
        key = rtype[0].lower() + rtype[1:]
        if req.codes is None or not req.codes or req.code_paths - {"code", "vaccineCode", "medication"}:
            queries.append(PrefetchQuery(key, rtype, base))
            continue
        codes = sorted(req.codes)
        code_param = CODE_PARAM.get(rtype, "code")
        chunks = _chunks(codes, f"{base}&{code_param}=")
        for i, chunk in enumerate(chunks, start=1):
            query = f"{base}&{code_param}=" + ",".join(f"{c.system}|{c.code}" for c in chunk)
            queries.append(PrefetchQuery(key if len(chunks) == 1 else f"{key}-{i}", rtype, query))
    return queries


def prefetch_templates(queries: list[PrefetchQuery]) -> dict[str, str]:
    return {q.key: q.template for q in queries}
