"""CQL -> ELM through the official translator (`@cqframework/cql`, run by Node).

Two shapes: `translate_files` for the build (one Node process, one batch, shared library
cache), and `Translator` for many ad-hoc translations (a long-lived process reading JSON
lines), used for CQL-only Libraries and the conformance suite.
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

from .pool import ENGINE_DIR, EngineUnavailable

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
    """A long-lived translator process (JSON lines); thread-safe, one request at a time."""

    def __init__(self, rules_dirs: Sequence[Path] = (), *, result_types: bool = False) -> None:
        cmd = [_node(), str(TRANSLATE_SCRIPT), "--serve"] + (["--result-types"] if result_types else [])
        for d in rules_dirs:
            cmd += ["--rules", str(Path(d).resolve())]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1, cwd=str(ENGINE_DIR))
        self._lock = threading.Lock()
        self._next = 0

    def translate(self, cql: str, sources: Mapping[str, str] | None = None) -> Translation:
        with self._lock:
            self._next += 1
            assert self._proc.stdin and self._proc.stdout
            self._proc.stdin.write(json.dumps({"id": self._next, "cql": cql, "sources": dict(sources or {})}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the CQL translator process exited")
        reply = json.loads(line)
        if reply.get("error"):
            raise RuntimeError(f"the CQL translator failed: {reply['error']}")
        return _translation(reply)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Translator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
