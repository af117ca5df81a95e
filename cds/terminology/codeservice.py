"""FHIR ValueSets -> the expansions the CQL engine's code service loads.

Why one version per canonical URL: the rules declare their value sets without a version, so a
site adds its local codes by publishing a newer version of a ValueSet (no code change; a
catalogue reload picks it up). Of several versions, an active one wins, then the highest
version. A value set that includes other value sets (`compose.include.valueSet`) is expanded
again from the chosen members, so a site's new code in a member reaches the union too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Code:
    system: str
    code: str
    display: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ValueSetExpansion:
    """One version of one value set, as the engine uses it."""

    url: str
    version: str
    codes: tuple[Code, ...]
    name: str | None = None
    title: str | None = None
    status: str | None = None
    members: tuple[str, ...] = ()  # canonical URLs of included value sets
    members_system: str | None = None  # compose.include.system beside valueSet: only that system's codes
    own: tuple[Code, ...] = ()  # codes that are not from a member (explicit concepts, expanded filters)
    source: str = "committed"  # committed | terminology-server
    resource: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def systems(self) -> set[str]:
        return {c.system for c in self.codes}


def _version_key(version: str | None) -> tuple[Any, ...]:
    parts = str(version or "").split(".")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def from_resource(res: Mapping[str, Any]) -> ValueSetExpansion:
    """A ValueSet resource with an expansion (else its explicit compose concepts)."""
    url = str(res.get("url") or "")
    if not url:
        raise ValueError(f"ValueSet/{res.get('id')} has no canonical url")
    compose = res.get("compose") or {}
    members = tuple(str(u) for inc in compose.get("include") or [] for u in inc.get("valueSet") or [])
    members_system = next((str(inc["system"]) for inc in compose.get("include") or []
                           if inc.get("valueSet") and inc.get("system")), None)
    explicit = [Code(str(inc["system"]), str(c["code"]), c.get("display"))
                for inc in compose.get("include") or [] if inc.get("system")
                for c in inc.get("concept") or [] if c.get("code")]
    contains = (res.get("expansion") or {}).get("contains")
    if contains is not None:
        codes = _flatten_contains(contains)
    elif not members and all(not inc.get("filter") for inc in compose.get("include") or []):
        codes = explicit  # an extensional definition is its own expansion
    else:
        raise ValueError(f"ValueSet {url} has filters or members but no expansion")
    return ValueSetExpansion(url=url, version=str(res.get("version") or ""), codes=tuple(_unique(codes)),
                             name=res.get("name"), title=res.get("title"), status=res.get("status"),
                             members=members, members_system=members_system, own=tuple(_unique(codes)) if not members else tuple(_unique(explicit)),
                             resource=res)


def _flatten_contains(items: Iterable[Mapping[str, Any]]) -> list[Code]:
    out: list[Code] = []
    for c in items:
        if c.get("system") and c.get("code") and not c.get("abstract") and not c.get("inactive"):
            out.append(Code(str(c["system"]), str(c["code"]), c.get("display")))
        out += _flatten_contains(c.get("contains") or [])
    return out


def _unique(codes: Iterable[Code]) -> list[Code]:
    seen: set[tuple[str, str]] = set()
    out = []
    for c in codes:
        if (c.system, c.code) not in seen:
            seen.add((c.system, c.code))
            out.append(c)
    return out


def select_value_sets(resources: Iterable[Mapping[str, Any]], problems: list[str] | None = None) -> dict[str, ValueSetExpansion]:
    """url -> the version to use: active first, then the highest version; unions re-expanded."""
    chosen: dict[str, ValueSetExpansion] = {}
    for res in resources:
        if res.get("resourceType") != "ValueSet":
            continue
        try:
            vs = from_resource(res)
        except ValueError as exc:
            if problems is not None:
                problems.append(str(exc))
            log.warning("terminology: %s", exc)
            continue
        old = chosen.get(vs.url)
        key = (vs.status == "active", _version_key(vs.version))
        if old is None or key > (old.status == "active", _version_key(old.version)):
            chosen[vs.url] = vs
    return recompose(chosen)


def recompose(value_sets: Mapping[str, ValueSetExpansion]) -> dict[str, ValueSetExpansion]:
    """Value sets that include others get the union of the chosen members' expansions."""
    out = dict(value_sets)
    done: set[str] = set()

    def expand(url: str, stack: tuple[str, ...]) -> ValueSetExpansion:
        vs = out[url]
        if url in done or not vs.members:
            return vs
        if url in stack:
            raise ValueError(f"value sets include each other in a cycle: {' -> '.join(stack + (url,))}")
        codes = list(vs.own)
        for member in vs.members:
            if member in out:
                codes += [c for c in expand(member, stack + (url,)).codes
                          if vs.members_system is None or c.system == vs.members_system]
            else:  # keep what the committed expansion had for a member we do not hold
                log.warning("terminology: %s includes %s, which is not loaded", url, member)
                codes += vs.codes
        out[url] = replace(vs, codes=tuple(_unique(codes)))
        done.add(url)
        return out[url]

    for url in list(out):
        expand(url, ())
    return out


def cql_value_sets(value_sets: Mapping[str, ValueSetExpansion]) -> dict[str, dict[str, list[dict[str, str]]]]:
    """The cql-execution CodeService dictionary: {url: {version: [{code, system, display}]}}."""
    return {vs.url: {vs.version: [{"code": c.code, "system": c.system, **({"display": c.display} if c.display else {})}
                                  for c in vs.codes]}
            for vs in value_sets.values()}


def resources_in_bundles(paths: Iterable[Path]) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        doc = json.loads(path.read_text(encoding="utf-8"))
        out += [e["resource"] for e in doc.get("entry") or []
                if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == "ValueSet"]
    return out


_COMMITTED: dict[Path, dict[str, ValueSetExpansion]] = {}


def committed_value_sets(bundles_dir: Path | None = None) -> dict[str, ValueSetExpansion]:
    """The value sets of the committed catalogue (fhir_bundles/catalogue.json), read once."""
    from ..paths import BUNDLES_DIR

    directory = (bundles_dir or BUNDLES_DIR).resolve()
    if directory not in _COMMITTED:
        catalogue = directory / "catalogue.json"
        files = [catalogue] if catalogue.exists() else sorted(directory.glob("*.json"))
        _COMMITTED[directory] = select_value_sets(resources_in_bundles(files))
    return dict(_COMMITTED[directory])


def orderable(value_sets: Mapping[str, ValueSetExpansion]) -> set[tuple[str, str]]:
    """The first code of every value set: by convention the one to order or record."""
    return {(vs.codes[0].system, vs.codes[0].code) for vs in value_sets.values() if vs.codes and not vs.members}
