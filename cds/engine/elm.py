"""Reading compiled ELM: includes, defines and data requirements.

Why derive data requirements from ELM: the engine only ever sees what the libraries retrieve,
so the ELM is the one honest source for "which resource types and codes does this catalogue
need" (bundle trimming here, CDS Hooks prefetch templates later). A hand-kept list would drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

FHIR_NS = "{http://hl7.org/fhir}"

Elm = Mapping[str, Any]
# Canonical URL -> the (system, code) pairs of the value set's expansion.
ValueSetCodes = Mapping[str, Iterable[tuple[str, str]]]


@dataclass(frozen=True, order=True)
class CodeKey:
    """(system, code): what a retrieve filters on and what trimming matches a record's codings
    against. A hashable, ordered key, not a FHIR Coding (that is cds.fhir.coding.Coding)."""

    system: str
    code: str


@dataclass
class TypeRequirement:
    """What the libraries retrieve of one FHIR resource type.

    `codes` is None when some retrieve of this type is not filtered by a code the ELM states
    (or by one that cannot be resolved statically): then every resource of the type is needed.
    """

    resource_type: str
    code_paths: set[str] = field(default_factory=set)
    codes: set[CodeKey] | None = field(default_factory=set)

    def merge_unfiltered(self) -> None:
        self.codes = None


def library_name(elm: Elm) -> str:
    return str(elm["library"]["identifier"]["id"])


def library_version(elm: Elm) -> str | None:
    version = elm["library"]["identifier"].get("version")
    return None if version is None else str(version)


def includes(elm: Elm) -> dict[str, str]:
    """Local alias -> library name of every `include`."""
    defs = (elm["library"].get("includes") or {}).get("def") or []
    return {d["localIdentifier"]: d["path"] for d in defs}


def value_set_urls(elm: Elm) -> set[str]:
    """Canonical URLs of the value sets the library declares."""
    defs = (elm["library"].get("valueSets") or {}).get("def") or []
    return {str(d["id"]) for d in defs}


def define_names(elm: Elm) -> list[str]:
    """Names of the expression definitions (not functions), in source order."""
    defs = (elm["library"].get("statements") or {}).get("def") or []
    return [d["name"] for d in defs if d.get("type") != "FunctionDef" and d["name"] != "Patient"]


def closure(names: Iterable[str], libraries: Mapping[str, Elm]) -> list[str]:
    """The named libraries and everything they include, transitively."""
    seen: list[str] = []
    stack = list(names)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        if name not in libraries:
            raise KeyError(f"library {name} is not compiled (is rules/{name}.cql missing?)")
        seen.append(name)
        stack.extend(includes(libraries[name]).values())
    return seen


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


class _Resolver:
    """Resolves a retrieve's `codes` expression to concrete codings when it is static."""

    def __init__(self, libraries: Mapping[str, Elm], value_sets: ValueSetCodes | None = None) -> None:
        self.libraries = libraries
        self.value_sets = value_sets

    def _lib(self, current: str, alias: str | None) -> str:
        if alias is None:
            return current
        return includes(self.libraries[current]).get(alias, alias)

    def _statement(self, lib: str, section: str, name: str) -> dict[str, Any] | None:
        defs = (self.libraries[lib]["library"].get(section) or {}).get("def") or []
        return next((d for d in defs if d.get("name") == name), None)

    def codes(self, node: Any, lib: str, depth: int = 0) -> set[CodeKey] | None:
        if depth > 20 or not isinstance(node, dict):
            return None
        kind = node.get("type")
        if kind == "CodeRef":
            target = self._lib(lib, node.get("libraryName"))
            code_def = self._statement(target, "codes", node["name"])
            if code_def is None:
                return None
            system_def = self._statement(target, "codeSystems", code_def["codeSystem"]["name"])
            if system_def is None:
                return None
            return {CodeKey(system_def["id"], code_def["id"])}
        if kind == "Code":
            system = node.get("system") or {}
            system_def = self._statement(self._lib(lib, system.get("libraryName")), "codeSystems",
                                         system.get("name", ""))
            if system_def is None:
                return None
            return {CodeKey(system_def["id"], node["code"])}
        if kind == "List":
            out: set[CodeKey] = set()
            for element in node.get("element") or []:
                got = self.codes(element, lib, depth + 1)
                if got is None:
                    return None
                out |= got
            return out
        if kind == "ValueSetRef":
            target = self._lib(lib, node.get("libraryName"))
            vs_def = self._statement(target, "valueSets", node["name"])
            if vs_def is None or self.value_sets is None or vs_def["id"] not in self.value_sets:
                return None
            return {CodeKey(system, code) for system, code in self.value_sets[vs_def["id"]]}
        if kind == "ExpandValueSet":
            return self.codes(node.get("operand"), lib, depth + 1)
        if kind in {"ToList", "ToConcept", "As"}:
            return self.codes(node.get("operand"), lib, depth + 1)
        if kind == "Property" and node.get("path") == "codes":
            # `[Observation: "Some Concept"]` translates to Property(codes, ConceptRef).
            return self.codes(node.get("source"), lib, depth + 1)
        if kind == "Concept":
            return self.codes({"type": "List", "element": node.get("code") or []}, lib, depth + 1)
        if kind == "ConceptRef":
            target = self._lib(lib, node.get("libraryName"))
            concept = self._statement(target, "concepts", node["name"])
            if concept is None:
                return None
            refs = [{"type": "CodeRef", "name": c["name"], "libraryName": c.get("libraryName")}
                    for c in concept.get("code") or []]
            return self.codes({"type": "List", "element": refs}, target, depth + 1)
        if kind == "ExpressionRef":
            target = self._lib(lib, node.get("libraryName"))
            stmt = self._statement(target, "statements", node["name"])
            return None if stmt is None else self.codes(stmt.get("expression"), target, depth + 1)
        if kind == "Union":
            out = set()
            for operand in node.get("operand") or []:
                got = self.codes(operand, lib, depth + 1)
                if got is None:
                    return None
                out |= got
            return out
        return None


def data_requirements(names: Iterable[str], libraries: Mapping[str, Elm],
                      value_sets: ValueSetCodes | None = None) -> dict[str, TypeRequirement]:
    """Resource types (and codes, where static) retrieved by the named libraries and includes.

    A retrieve filtered by a value set is resolved through `value_sets` (its expansion); one
    whose value set is not given counts as unfiltered (every resource of the type is needed)."""
    resolver = _Resolver(libraries, value_sets)
    out: dict[str, TypeRequirement] = {}
    for lib in closure(names, libraries):
        for node in _walk(libraries[lib]["library"].get("statements")):
            if node.get("type") != "Retrieve":
                continue
            data_type = str(node.get("dataType", ""))
            if not data_type.startswith(FHIR_NS):
                continue
            resource_type = data_type[len(FHIR_NS):]
            req = out.setdefault(resource_type, TypeRequirement(resource_type))
            if node.get("codes") is None:
                req.merge_unfiltered()
                continue
            codes = resolver.codes(node["codes"], lib)
            if codes is None or req.codes is None:
                req.merge_unfiltered()
            else:
                req.codes |= codes
            req.code_paths.add(str(node.get("codeProperty") or "code"))
    return out


def orderable_codes(libraries: Mapping[str, Elm], value_sets: Mapping[str, Any] | None = None) -> set[tuple[str, str]]:
    """The first code of every code-list define and of every value set the libraries declare:
    by convention the code to order or record.

    (A value set lists several accepted codes per test, the preferred one first; a card
    suggests ordering that one, not every synonym.) `value_sets` maps canonical URL to an
    object with `codes` (terminology.ValueSetExpansion).
    """
    resolver = _Resolver(libraries)
    out: set[tuple[str, str]] = set()
    declared = {url for doc in libraries.values() for url in value_set_urls(doc)}
    for url in declared:
        vs = (value_sets or {}).get(url)
        codes = getattr(vs, "codes", None)
        if codes and not getattr(vs, "members", ()):
            out.add((codes[0].system, codes[0].code))
    for lib, doc in libraries.items():
        for stmt in (doc["library"].get("statements") or {}).get("def") or []:
            expr = stmt.get("expression") or {}
            if stmt.get("type") == "FunctionDef" or expr.get("type") != "List":
                continue
            elements = expr.get("element") or []
            if not elements or elements[0].get("type") not in {"Code", "CodeRef"}:
                continue
            first = resolver.codes(elements[0], lib)
            if first:
                out |= {(c.system, c.code) for c in first}
    return out
