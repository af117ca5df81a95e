"""The trial catalogue, read back from FHIR: ResearchStudy + eligibility Group + Libraries.

Why read the published bundles rather than rules/*.json: the bundles are what a FHIR server
holds, so the service runs on exactly what any other consumer of the catalogue sees, and a
trial loaded from a server (or a sixth trial dropped into fhir_bundles/) needs no code.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .engine.elm import library_name
from .fhir.systems import (
    CRITERION_SYSTEM,
    CTGOV,
    EXT_CLINICIAN_REVIEW,
    EXT_CQF_EXPRESSION,
    EXT_CRITERION_TEXT,
    EXT_R5_LABEL,
)

log = logging.getLogger(__name__)


class CatalogueError(ValueError):
    """A trial's resources are incomplete or inconsistent."""


@dataclass(frozen=True)
class CriterionDef:
    id: str
    kind: Literal["inclusion", "exclusion", "review"]
    define: str
    text: str
    exclude: bool
    # What the criterion measures (the characteristic's code other than the criterion id) and its
    # threshold (value[x] as published: valueQuantity / valueRange / valueCodeableConcept), for display.
    measure: tuple[tuple[str, str, str | None], ...] = ()
    threshold: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TrialDef:
    id: str
    title: str
    library: str
    criteria: tuple[CriterionDef, ...]
    page: str | None = None
    nct: str | None = None
    description: str | None = None
    short_title: str | None = None

    @property
    def name(self) -> str:
        """What a clinician calls it: the short title when published, else the title."""
        return self.short_title or self.title

    @property
    def registry_id(self) -> str | None:
        return self.nct


@dataclass
class Catalogue:
    trials: list[TrialDef]
    libraries: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)
    # Canonical URL -> the ValueSet version in use (terminology.ValueSetExpansion).
    value_sets: dict[str, Any] = field(default_factory=dict)
    # How each value set's expansion was obtained, for /readyz (terminology server or committed).
    terminology: dict[str, Any] = field(default_factory=dict)

    def trial(self, trial_id: str) -> TrialDef:
        for t in self.trials:
            if t.id == trial_id:
                return t
        raise KeyError(trial_id)

    @property
    def trial_libraries(self) -> list[str]:
        return [t.library for t in self.trials]

    @classmethod
    def from_resources(cls, resources: Iterable[Mapping[str, Any]]) -> Catalogue:
        """Build from FHIR resources; a broken trial is reported in `problems` and skipped."""
        by_type: dict[str, dict[str, Mapping[str, Any]]] = {}
        for r in resources:
            by_type.setdefault(str(r.get("resourceType")), {})[str(r.get("id"))] = r
        libraries: dict[str, dict[str, Any]] = {}
        library_by_url: dict[str, str] = {}
        problems: list[str] = []
        for lib in by_type.get("Library", {}).values():
            try:
                elm = _elm_of(lib)
            except CatalogueError as exc:
                problems.append(f"Library/{lib.get('id')}: {exc}")
                continue
            name = library_name(elm)
            libraries[name] = elm
            library_by_url[f"Library/{lib.get('id')}"] = name
            if lib.get("url"):
                library_by_url[str(lib["url"])] = name
        trials = []
        for study in sorted(by_type.get("ResearchStudy", {}).values(), key=lambda s: str(s.get("id"))):
            if study.get("status") != "active":
                continue
            try:
                trials.append(_trial(study, by_type.get("Group", {}), library_by_url, libraries))
            except CatalogueError as exc:
                problems.append(f"ResearchStudy/{study.get('id')}: {exc}")
        from .engine.elm import closure, value_set_urls
        from .terminology import select_value_sets

        # A trial whose rules use a value set the catalogue lacks cannot be evaluated: skipped.
        value_sets = select_value_sets(by_type.get("ValueSet", {}).values(), problems)
        usable = []
        for trial in trials:
            try:
                needed = {url for lib in closure([trial.library], libraries) for url in value_set_urls(libraries[lib])}
            except KeyError as exc:
                problems.append(f"ResearchStudy/{trial.id}: {exc.args[0]}")
                continue
            missing = sorted(needed - set(value_sets))
            if missing:
                problems.append(f"ResearchStudy/{trial.id}: value sets not in the catalogue: {', '.join(missing[:5])}"
                                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
                continue
            usable.append(trial)
        trials = usable
        for p in problems:
            log.warning("catalogue: %s", p)
        return cls(trials, libraries, problems, value_sets=value_sets)

    @classmethod
    def from_bundle_files(cls, paths: Iterable[Path]) -> Catalogue:
        resources: list[dict[str, Any]] = []
        for path in paths:
            doc = json.loads(path.read_text(encoding="utf-8"))
            resources.extend(e["resource"] for e in doc.get("entry") or [] if isinstance(e.get("resource"), dict))
        return cls.from_resources(resources)

    @classmethod
    def from_directory(cls, directory: Path) -> Catalogue:
        """Every trial bundle in `directory` (catalogue.json is their union, so it is skipped)."""
        files = sorted(p for p in directory.glob("*.json") if p.name != "catalogue.json")
        if not files and (directory / "catalogue.json").exists():
            files = [directory / "catalogue.json"]
        return cls.from_bundle_files(files)


def _elm_of(lib: Mapping[str, Any]) -> dict[str, Any]:
    for content in lib.get("content") or []:
        if content.get("contentType") == "application/elm+json" and content.get("data"):
            try:
                elm: dict[str, Any] = json.loads(base64.b64decode(content["data"]))
                return elm
            except (binascii.Error, ValueError) as exc:
                raise CatalogueError(f"ELM content is not base64 JSON ({exc})") from None
    raise CatalogueError("no application/elm+json content")


def _ext(element: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    return next((e for e in element.get("extension") or [] if e.get("url") == url), None)


def _trial(study: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]],
           library_by_url: Mapping[str, str], libraries: Mapping[str, Any]) -> TrialDef:
    refs = [str(e.get("reference", "")) for e in study.get("enrollment") or []]
    group = next((groups[r.split("/", 1)[1]] for r in refs if r.startswith("Group/") and r.split("/", 1)[1] in groups), None)
    if group is None:
        raise CatalogueError(f"eligibility Group not found ({', '.join(refs) or 'no enrollment'})")
    criteria = []
    library: str | None = None
    for ch in group.get("characteristic") or []:
        expr = (_ext(ch, EXT_CQF_EXPRESSION) or {}).get("valueExpression") or {}
        define = expr.get("expression")
        lib = library_by_url.get(str(expr.get("reference")))
        if not define or lib is None:
            raise CatalogueError(f"characteristic without a resolvable cqf-expression ({expr.get('reference')})")
        if library not in (None, lib):
            raise CatalogueError("characteristics point at more than one Library")
        library = lib
        coding = next((c for c in (ch.get("code") or {}).get("coding") or [] if c.get("system") == CRITERION_SYSTEM), None)
        cid = coding["code"] if coding else define
        exclude = bool(ch.get("exclude"))
        review = bool((_ext(ch, EXT_CLINICIAN_REVIEW) or {}).get("valueBoolean"))
        text = (_ext(ch, EXT_CRITERION_TEXT) or {}).get("valueString") or (ch.get("code") or {}).get("text") or define
        measure = tuple((str(c.get("system") or ""), str(c["code"]), c.get("display"))
                        for c in (ch.get("code") or {}).get("coding") or [] if c.get("system") != CRITERION_SYSTEM and c.get("code"))
        threshold = next(({k: v} for k, v in ch.items() if k.startswith("value") and k != "valueBoolean"), None)
        criteria.append(CriterionDef(cid, "review" if review else ("exclusion" if exclude else "inclusion"), define, text, exclude,
                                     measure, threshold))
    if library is None or library not in libraries:
        raise CatalogueError("no criteria or no compiled Library")
    nct = next((i.get("value") for i in study.get("identifier") or [] if i.get("system") == CTGOV), None)
    page = next((a.get("url") for a in study.get("relatedArtifact") or [] if a.get("type") == "documentation" and a.get("url")), None)
    return TrialDef(
        id=str(study["id"]),
        title=str(study.get("title") or study["id"]),
        library=library,
        criteria=tuple(criteria),
        page=page,
        nct=nct,
        description=study.get("description"),
        short_title=_short_title(study),
    )


def _short_title(study: Mapping[str, Any]) -> str | None:
    for ext in study.get("extension") or []:
        if ext.get("url") != EXT_R5_LABEL:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or []}
        codes = {c.get("code") for c in ((parts.get("type") or {}).get("valueCodeableConcept") or {}).get("coding") or []}
        value = (parts.get("value") or {}).get("valueString")
        if "short-title" in codes and value:
            return str(value)
    return None
