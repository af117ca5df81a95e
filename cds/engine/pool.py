"""A pool of long-lived Node workers running the CQL engines (cds/engine/worker.mjs).

Why a pool of processes: the engines (the compiled engine over cql-execution's runtime, and
the reference engine, cql-execution + cql-exec-fhir) are JavaScript, and loading and compiling
libraries costs far more than evaluating one patient, so workers are started once, loaded once
and reused. Each worker serves one request at a time; the pool hands idle workers to callers
from a queue, so a caller never shares a worker.

Which engine: `engine="compiled"` (the default) or `"reference"`, else $TRIAL_CDS_ENGINE. A
library the compiled engine does not compile runs on the reference engine in the same worker,
and the pool logs it (warning) when the worker loads.

Failure model: a worker that times out, dies, or writes anything that is not a reply line is
killed (SIGKILL) and replaced in the background, and the caller gets an `EngineError` at once.
Workers read their requests from stdin and exit when it closes, so even a hard kill of this
Python process leaves no Node process behind.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import EngineError, EngineTimeout, EngineUnavailable
from .jsonlines import JsonLinesProcess

log = logging.getLogger(__name__)

ENGINE_DIR = Path(__file__).resolve().parent
WORKER_SCRIPT = ENGINE_DIR / "worker.mjs"
ENGINES = ("compiled", "reference")

__all__ = ["ENGINES", "EngineError", "EngineTimeout", "EngineUnavailable", "WorkerPool", "engine_kind"]


def engine_kind(value: str | None = None) -> str:
    """The engine to run: `value`, else $TRIAL_CDS_ENGINE, else "compiled"."""
    kind = (value if value is not None else os.environ.get("TRIAL_CDS_ENGINE") or "compiled").strip().lower()
    if kind not in ENGINES:
        raise ValueError(f"TRIAL_CDS_ENGINE must be one of {', '.join(ENGINES)}, not {kind!r}")
    return kind


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise EngineUnavailable("Node.js is not installed (the CQL engine needs `node` on PATH)")
    if not (ENGINE_DIR / "node_modules" / "cql-execution").is_dir():
        raise EngineUnavailable(
            f"the CQL engine's Node packages are not installed: run `npm ci --prefix {ENGINE_DIR}`"
        )
    return [node, str(WORKER_SCRIPT)]


_ALL_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_ALL_POOLS):
        pool.close()


class WorkerPool:
    """Owns `size` Node workers with the same libraries loaded.

    `libraries` maps library name to its ELM JSON (every library a call may name, and every
    library they include). `value_sets` is the cql-execution value set dictionary.
    """

    def __init__(
        self,
        libraries: Mapping[str, Mapping[str, Any]],
        *,
        size: int | None = None,
        timeout: float = 10.0,
        start_timeout: float = 30.0,
        value_sets: Mapping[str, Any] | None = None,
        command: Sequence[str] | None = None,
        engine: str | None = None,
        patches: str | None = None,
    ) -> None:
        self.libraries = dict(libraries)
        self.engine = engine_kind(engine)
        # The reference engine's patches (TRIAL_CDS_ENGINE_PATCHES, cds/engine/patches/): None
        # inherits the environment; "all", "none" or a comma-separated list of patch names.
        self.patches = patches
        self.load_info: dict[str, Any] = {}
        self.size = size or max(1, min(4, os.cpu_count() or 1))
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.value_sets = dict(value_sets or {})
        self._command = list(command) if command else None
        self._idle: queue.Queue[JsonLinesProcess] = queue.Queue()
        self._all: set[JsonLinesProcess] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._started = False
        _ALL_POOLS.add(self)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> WorkerPool:
        """Start every worker, load the libraries and warm each one; raise if any fails."""
        if self._started:
            return self
        self._started = True
        errors: list[BaseException] = []

        def boot() -> None:
            try:
                self._idle.put(self._spawn())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=boot, daemon=True) for _ in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.close()
            raise EngineUnavailable(f"CQL workers failed to start: {errors[0]}") from errors[0]
        return self

    def close(self) -> None:
        """Stop every worker: close stdin (clean exit), then kill what is left."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for w in workers:
            w.close_stdin()
        deadline = time.monotonic() + 2.0
        for w in workers:
            w.close(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._all if w.alive())

    @property
    def idle(self) -> int:
        """Workers free right now (approximate: others may take them a moment later)."""
        return self._idle.qsize()

    @property
    def ready(self) -> bool:
        return self._started and not self._closed and bool(self.pids)

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self) -> JsonLinesProcess:
        cmd = self._command or node_command()
        env = {"TRIAL_CDS_ENGINE_PATCHES": self.patches} if self.patches is not None else None
        worker = JsonLinesProcess(cmd, cwd=ENGINE_DIR, name="cql worker", env=env)
        with self._lock:
            if self._closed:
                worker.kill()
                raise EngineUnavailable("the CQL worker pool is closed")
            self._all.add(worker)
        try:
            info = self._call(worker, {"op": "load", "libraries": self.libraries, "valueSets": self.value_sets,
                                       "engine": self.engine}, self.start_timeout)
            self._loaded(info)
            # Warm-up: one evaluation of every library on an empty record, so the first real
            # call does not pay for lazy initialisation inside the engine.
            warm_bundle = {"resourceType": "Bundle", "type": "collection",
                           "entry": [{"resource": {"resourceType": "Patient", "id": "warm-up"}}]}
            self._call(worker, {"op": "evaluate", "libraries": sorted(self.libraries),
                                "bundle": warm_bundle, "executionDateTime": "2000-01-01T00:00:00Z"},
                       self.start_timeout)
        except BaseException:
            self._retire(worker)
            raise
        return worker

    def _loaded(self, info: Mapping[str, Any]) -> None:
        """Remember what the first worker reported at load; log libraries left to the reference."""
        first = not self.load_info
        self.load_info = {k: v for k, v in info.items() if k not in ("id", "ok")}
        if first:
            for name, why in sorted((info.get("fallback") or {}).items()):
                log.warning("CQL library %s runs on the reference engine: %s", name, "; ".join(map(str, why)))

    def _retire(self, worker: JsonLinesProcess) -> None:
        with self._lock:
            self._all.discard(worker)
        worker.kill()

    def _replace(self, worker: JsonLinesProcess) -> None:
        """Kill a broken worker and start its successor in the background."""
        self._retire(worker)
        if self._closed:
            return

        def respawn() -> None:
            try:
                self._idle.put(self._spawn())
            except EngineError as exc:
                if not self._closed:  # closing the pool mid-respawn is not a failure
                    log.error("could not replace a CQL worker: %s", exc)

        threading.Thread(target=respawn, daemon=True).start()

    def _call(self, worker: JsonLinesProcess, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait for its reply; raise EngineError on any fault."""
        try:
            reply = worker.call(message, timeout)
        except EngineTimeout as exc:
            raise EngineTimeout(f"CQL evaluation timed out after {timeout:.1f} s (worker {worker.pid} killed)") from exc
        if not reply.get("ok"):
            raise _RequestError(str(reply.get("error") or "unknown engine error"))
        return reply

    # -- public ---------------------------------------------------------------------------

    def request(self, message: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Run one request on an idle worker. Timeout covers waiting for a worker and the call."""
        if not self._started:
            self.start()
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise EngineUnavailable("the CQL worker pool is closed")
            try:
                worker = self._idle.get(timeout=max(0.01, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise EngineTimeout(f"no CQL worker became free within {timeout:.1f} s") from None
                continue
            if worker.alive():
                break
            self._replace(worker)
        try:
            reply = self._call(worker, message, max(0.05, deadline - time.monotonic()))
        except _RequestError as exc:
            # The worker is healthy; the request was bad (e.g. an unknown library).
            self._idle.put(worker)
            raise EngineError(str(exc)) from None
        except EngineError:
            self._replace(worker)
            raise
        except BaseException:
            self._replace(worker)
            raise
        self._idle.put(worker)
        return reply

    def evaluate(
        self,
        libraries: Sequence[str],
        bundle: Mapping[str, Any] | None,
        execution_datetime: str,
        *,
        parameters: Mapping[str, Mapping[str, Any]] | None = None,
        timeout: float | None = None,
        defines: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Evaluate each named library for one patient; raw tagged JSON of every define (or of
        `defines[library]` only, when given)."""
        unknown = [name for name in libraries if name not in self.libraries]
        if unknown:
            raise EngineError(f"unknown CQL libraries: {', '.join(unknown)}")
        reply = self.request(
            {"op": "evaluate", "libraries": list(libraries), "bundle": bundle,
             "executionDateTime": execution_datetime, "parameters": parameters or {},
             **({"defines": {k: list(v) for k, v in defines.items()}} if defines else {})},
            timeout=timeout,
        )
        results: dict[str, dict[str, Any]] = reply["results"]
        return results


class _RequestError(EngineError):
    """The worker answered with an error for this request (it stays in service)."""
