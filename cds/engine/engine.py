"""The engine facade: compiled libraries + a worker pool + bundle trimming.

`Engine.evaluate` is the one call the rest of the service makes: a patient Bundle, the
libraries to run and the evaluation time in; every `define`'s value out, typed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import elm as elm_mod
from .pool import WorkerPool
from .trim import trim_bundle
from .values import CqlValue, decode


def load_elm_dir(directory: Path) -> dict[str, dict[str, Any]]:
    """Every compiled library in `directory` (`<Name>.json`), keyed by library name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out[elm_mod.library_name(doc)] = doc
    return out


def execution_time(at: datetime | str) -> str:
    """ISO form in UTC, with milliseconds, as cql-execution parses it."""
    if isinstance(at, str):
        try:
            at = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"evaluation time is not an ISO date-time: {at!r}") from exc
    if at.tzinfo is None:
        raise ValueError("evaluation time needs a UTC offset (e.g. 2026-11-26T09:00:00Z)")
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class EvaluationResult:
    """Every define of every evaluated library, decoded (`values[library][define]`)."""

    at: str
    values: dict[str, dict[str, CqlValue]]
    raw: dict[str, dict[str, Any]]

    def __getitem__(self, library: str) -> dict[str, CqlValue]:
        return self.values[library]


class Engine:
    """Compiled libraries bound to a pool of CQL workers."""

    def __init__(
        self,
        libraries: Mapping[str, Mapping[str, Any]],
        *,
        pool_size: int | None = None,
        timeout: float = 10.0,
        trim: bool = True,
        command: Sequence[str] | None = None,
        value_sets: Mapping[str, Any] | None = None,
        engine: str | None = None,
        patches: str | None = None,
    ) -> None:
        """`value_sets`: canonical URL -> terminology.ValueSetExpansion, what the code service
        holds; by default the committed expansions of the project's catalogue (fhir_bundles/).
        `engine`: "compiled" or "reference" (default $TRIAL_CDS_ENGINE, else compiled);
        `patches`: the reference engine's patches (default $TRIAL_CDS_ENGINE_PATCHES, else all)."""
        from ..terminology import committed_value_sets, cql_value_sets

        self.libraries = {k: dict(v) for k, v in libraries.items()}
        self.trim = trim
        declared = {url for doc in self.libraries.values() for url in elm_mod.value_set_urls(doc)}
        if value_sets is None:
            value_sets = committed_value_sets() if declared else {}
        self.value_sets = dict(value_sets)
        self._codes = {url: [(c.system, c.code) for c in vs.codes] for url, vs in self.value_sets.items()}
        self.pool = WorkerPool(self.libraries, size=pool_size, timeout=timeout, command=command,
                               value_sets=cql_value_sets({u: v for u, v in self.value_sets.items() if u in declared}),
                               engine=engine, patches=patches)
        self._requirements: dict[frozenset[str], dict[str, elm_mod.TypeRequirement]] = {}
        # Cost of evaluating a library grows with its ELM; used to balance a split call.
        self._weight = {name: len(json.dumps(doc)) for name, doc in self.libraries.items()}
        self._fanout: ThreadPoolExecutor | None = None

    @classmethod
    def from_directory(cls, directory: Path, **kwargs: Any) -> Engine:
        return cls(load_elm_dir(directory), **kwargs)

    def start(self) -> Engine:
        self.pool.start()
        return self

    def close(self) -> None:
        if self._fanout is not None:
            self._fanout.shutdown(wait=False, cancel_futures=True)
        self.pool.close()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def requirements(self, libraries: Sequence[str]) -> dict[str, elm_mod.TypeRequirement]:
        key = frozenset(libraries)
        if key not in self._requirements:
            self._requirements[key] = elm_mod.data_requirements(libraries, self.libraries, self._codes)
        return self._requirements[key]

    def evaluate(
        self,
        bundle: Mapping[str, Any] | None,
        libraries: Sequence[str],
        at: datetime | str,
        *,
        parameters: Mapping[str, Mapping[str, Any]] | None = None,
        timeout: float | None = None,
        defines: Mapping[str, Sequence[str]] | None = None,
    ) -> EvaluationResult:
        when = execution_time(at)
        sent = trim_bundle(bundle, self.requirements(libraries)) if (bundle and self.trim) else bundle
        groups = self._split(libraries)
        if len(groups) == 1:
            raw = self.pool.evaluate(libraries, sent, when, parameters=parameters, timeout=timeout, defines=defines)
        else:
            # One patient's libraries spread over idle workers: a CQL worker is single-threaded,
            # so on a multi-core machine this divides the latency of one evaluation.
            if self._fanout is None:
                self._fanout = ThreadPoolExecutor(max_workers=self.pool.size, thread_name_prefix="cql-fanout")
            futures = [self._fanout.submit(self.pool.evaluate, group, sent, when,
                                           parameters=parameters, timeout=timeout, defines=defines)
                       for group in groups]
            raw = {}
            for future in futures:
                raw.update(future.result())
            raw = {lib: raw[lib] for lib in libraries}
        values = {lib: {name: decode(v) for name, v in defs.items()} for lib, defs in raw.items()}
        return EvaluationResult(at=when, values=values, raw=raw)

    def _split(self, libraries: Sequence[str]) -> list[list[str]]:
        """Libraries in groups of similar cost (largest first, greedy), one per idle worker.

        Splitting costs extra CPU (each worker re-derives the shared record), so it is done
        only when workers are idle: it cuts one patient's latency on a quiet service and
        never takes workers that concurrent calls are waiting for.
        """
        n = min(self.pool.size, len(libraries), self.pool.idle)
        if n <= 1:
            return [list(libraries)]
        groups: list[list[str]] = [[] for _ in range(n)]
        loads = [0] * n
        for lib in sorted(libraries, key=lambda name: -self._weight.get(name, 0)):
            i = loads.index(min(loads))
            groups[i].append(lib)
            loads[i] += self._weight.get(lib, 0)
        return [g for g in groups if g]
