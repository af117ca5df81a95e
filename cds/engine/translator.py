"""CQL -> ELM through the official translator (`@cqframework/cql`, run by Node).

Two shapes: `translate_files` for the build (one Node process, one batch, shared library
cache), and `Translator` for many ad-hoc translations (a long-lived process speaking JSON lines
through the engine's one client, `jsonlines.JsonLinesProcess`: a timeout per translation, the
reply id checked, stderr logged), used for CQL-only Libraries and the conformance suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EngineError, EngineUnavailable
from .jsonlines import JsonLinesProcess
from .pool import ENGINE_DIR

TRANSLATE_SCRIPT = ENGINE_DIR / "translate.mjs"


@dataclass(frozen=True)
class TranslationMessage:
    message: str
    severity: str = "Error"
    line: int | None = None
    column: int | None = None

    def format(self, file: str | None) -> str:
        where = file or "<cql>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.severity.lower()}: {self.message}"


@dataclass(frozen=True)
class Translation:
    library: str | None
    version: str | None
    elm: dict[str, Any] | None
    errors: list[TranslationMessage] = field(default_factory=list)
    warnings: list[TranslationMessage] = field(default_factory=list)
    file: str | None = None

    @property
    def ok(self) -> bool:
        return self.elm is not None and not self.errors


class TranslationError(Exception):
    """CQL did not translate; `str()` lists file:line:column: message for each error."""

    def __init__(self, translations: Sequence[Translation]) -> None:
        self.translations = list(translations)
        lines = [m.format(t.file or t.library) for t in self.translations for m in t.errors]
        super().__init__("\n".join(lines) or "translation failed")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise EngineUnavailable("Node.js is not installed (the CQL translator needs `node` on PATH)")
    if not (ENGINE_DIR / "node_modules" / "@cqframework" / "cql").is_dir():
        raise EngineUnavailable(f"the CQL translator is not installed: run `npm ci --prefix {ENGINE_DIR}`")
    return node


def _message(m: Mapping[str, Any]) -> TranslationMessage:
    return TranslationMessage(str(m.get("message")), str(m.get("severity") or "Error"), m.get("line"), m.get("column"))


def _translation(r: Mapping[str, Any]) -> Translation:
    return Translation(
        library=r.get("library"),
        version=r.get("version"),
        elm=r.get("elm"),
        errors=[_message(m) for m in r.get("errors") or []],
        warnings=[_message(m) for m in r.get("warnings") or []],
        file=r.get("file"),
    )


def translate_files(files: Sequence[Path], rules_dirs: Sequence[Path]) -> list[Translation]:
    """Translate CQL files in one batch; includes resolve from `rules_dirs`."""
    cmd = [_node(), str(TRANSLATE_SCRIPT)]
    for d in rules_dirs:
        cmd += ["--rules", str(Path(d).resolve())]
    cmd += [str(Path(f).resolve()) for f in files]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ENGINE_DIR), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"the CQL translator failed: {proc.stderr.strip()[-2000:]}")
    return [_translation(r) for r in json.loads(proc.stdout)["results"]]


class Translator:
    """A long-lived translator process (JSON lines); thread-safe, one request at a time.

    A translation that takes longer than `timeout` seconds, or a process that dies or answers
    out of turn, raises EngineError (a RuntimeError); the process is killed and the next call
    starts a new one.
    """

    def __init__(self, rules_dirs: Sequence[Path] = (), *, result_types: bool = False,
                 timeout: float = 120.0) -> None:
        self._cmd = [_node(), str(TRANSLATE_SCRIPT), "--serve"] + (["--result-types"] if result_types else [])
        for d in rules_dirs:
            self._cmd += ["--rules", str(Path(d).resolve())]
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: JsonLinesProcess | None = self._start()

    def _start(self) -> JsonLinesProcess:
        return JsonLinesProcess(self._cmd, cwd=ENGINE_DIR, name="cql translator")

    def translate(self, cql: str, sources: Mapping[str, str] | None = None) -> Translation:
        with self._lock:
            if self._proc is None or not self._proc.alive():
                if self._proc is not None:
                    self._proc.kill()
                self._proc = self._start()
            proc = self._proc
            try:
                reply = proc.call({"cql": cql, "sources": dict(sources or {})}, self.timeout)
            except EngineError:
                proc.kill()
                self._proc = None
                raise
        if reply.get("error"):
            raise EngineError(f"the CQL translator failed: {reply['error']}")
        return _translation(reply)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.close()
                self._proc = None

    def __enter__(self) -> Translator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
