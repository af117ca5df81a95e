"""Trim a patient Bundle to what the libraries retrieve before it crosses the pipe.

Why: an EHR record holds thousands of resources the rules never look at; serialising and
wrapping them in the engine costs time on every call. The rule for keeping a resource comes
from the ELM (see `elm.data_requirements`), so trimming can never hide data a rule reads:
anything whose code cannot be judged (no coding at the path, a reference to a Medication
resource, a retrieve without a static code filter) is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .elm import CodeKey, TypeRequirement

# Choice-typed code paths as they appear on the wire (FHIR JSON names the type in the key).
_CHOICE_SUFFIXES = ("CodeableConcept", "Reference")


def _codings_at(resource: Mapping[str, Any], path: str) -> list[CodeKey] | None:
    """Codings at `path`, or None when the resource cannot be judged by its codes there."""
    value = resource.get(path)
    if value is None:
        for suffix in _CHOICE_SUFFIXES:
            if f"{path}{suffix}" in resource:
                value = resource[f"{path}{suffix}"]
                if suffix == "Reference":
                    return None
                break
    if value is None:
        return None
    concepts = value if isinstance(value, list) else [value]
    out: list[CodeKey] = []
    for concept in concepts:
        if not isinstance(concept, Mapping):
            return None
        for coding in concept.get("coding") or []:
            if isinstance(coding, Mapping) and coding.get("system") and coding.get("code"):
                out.append(CodeKey(str(coding["system"]), str(coding["code"])))
    return out


def _wanted(resource: Mapping[str, Any], req: TypeRequirement) -> bool:
    if req.codes is None:
        return True
    for path in req.code_paths or {"code"}:
        codings = _codings_at(resource, path)
        if codings is None or any(c in req.codes for c in codings):
            return True
    return False


def trim_bundle(bundle: Mapping[str, Any], requirements: Mapping[str, TypeRequirement]) -> dict[str, Any]:
    """A copy of `bundle` holding the Patient and only the resources some retrieve could return."""
    kept = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            kept.append({"resource": resource})
            continue
        req = requirements.get(str(rtype))
        if req is not None and _wanted(resource, req):
            kept.append({"resource": resource})
    return {"resourceType": "Bundle", "type": "collection", "entry": kept}
