"""`trial-cds build`: rules/*.cql -> rules/elm/*.json (and, once trials exist, the bundles).

ELM is committed so the service starts without Node's translator on the hot path; a test
re-runs the translation and fails when the committed ELM no longer matches its CQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine.translator import Translation, TranslationError, TranslationMessage, translate_files
from .paths import ELM_DIR, RULES_DIR


def elm_text(elm: dict[str, Any]) -> str:
    """The committed form of an ELM document: stable key order, one level of indent."""
    return json.dumps(elm, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def cql_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.cql"))


def translate_all(rules_dir: Path = RULES_DIR) -> list[Translation]:
    """Translate every CQL file; failures are returned (with file:line errors), not raised."""
    results = []
    for t in translate_files(cql_files(rules_dir), [rules_dir]):
        expected = Path(t.file or "").stem
        if t.ok and t.library != expected:
            t = Translation(t.library, t.version, None, file=t.file, errors=[TranslationMessage(
                f"library {t.library} must live in {t.library}.cql (the file is {expected}.cql)")])
        results.append(t)
    return results


def translate_rules(rules_dir: Path = RULES_DIR) -> list[Translation]:
    """Translate every CQL file; raise TranslationError listing file:line: message on failure."""
    results = translate_all(rules_dir)
    failed = [t for t in results if not t.ok]
    if failed:
        raise TranslationError(failed)
    return results


@dataclass(frozen=True)
class CompileReport:
    written: list[Path]
    unchanged: list[Path]
    removed: list[Path]


def compile_rules(rules_dir: Path = RULES_DIR, elm_dir: Path = ELM_DIR) -> CompileReport:
    """Write ELM for every library that translates; remove ELM whose CQL is gone.

    A library that fails keeps its previous ELM (so one broken file does not take the others
    down) and the whole call then raises TranslationError with every file:line message.
    """
    translations = translate_all(rules_dir)
    elm_dir.mkdir(parents=True, exist_ok=True)
    written, unchanged = [], []
    keep = {f"{p.stem}.json" for p in cql_files(rules_dir)}
    for t in translations:
        if not t.ok:
            continue
        assert t.elm is not None and t.library
        target = elm_dir / f"{t.library}.json"
        text = elm_text(t.elm)
        if target.exists() and target.read_text(encoding="utf-8") == text:
            unchanged.append(target)
        else:
            target.write_text(text, encoding="utf-8")
            written.append(target)
    removed = []
    for old in elm_dir.glob("*.json"):
        if old.name not in keep:
            old.unlink()
            removed.append(old)
    failed = [t for t in translations if not t.ok]
    if failed:
        raise TranslationError(failed)
    return CompileReport(written, unchanged, removed)


def stale_elm(rules_dir: Path = RULES_DIR, elm_dir: Path = ELM_DIR) -> list[str]:
    """Names of libraries whose committed ELM differs from a fresh translation (or is missing/extra)."""
    stale = []
    names = set()
    for t in translate_rules(rules_dir):
        assert t.elm is not None and t.library
        names.add(t.library)
        target = elm_dir / f"{t.library}.json"
        if not target.exists() or target.read_text(encoding="utf-8") != elm_text(t.elm):
            stale.append(t.library)
    stale += sorted(p.stem for p in elm_dir.glob("*.json") if p.stem not in names)
    return sorted(stale)
