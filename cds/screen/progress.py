"""Progress of a running screen: Spark's task counts plus what the executors have counted.

Executors count patients, patients in the catalogue's population and likely/possibly verdicts
per trial into one Spark accumulator (merged on the driver as each task ends); a driver thread
reads it with Spark's status tracker twice a second and hands a snapshot to the caller's
`progress` function (the CLI draws it). Figures for the report never come from here: they are
computed from the output table, exactly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.accumulators import AccumulatorParam

log = logging.getLogger(__name__)


class DictAccumulator(AccumulatorParam):  # type: ignore[type-arg]
    """Counts by name, added up."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:  # noqa: N802 - PySpark API
        for k, v in b.items():
            a[k] = a.get(k, 0) + v
        return a


def snapshot(sc: Any, counts: Any, expected: int | None = None) -> dict[str, Any]:
    tracker = sc.statusTracker()
    stages = []
    for stage_id in sorted(tracker.getActiveStageIds()):
        info = tracker.getStageInfo(stage_id)
        if info is not None:
            stages.append({"id": stage_id, "name": info.name, "tasks": info.numTasks,
                           "done": info.numCompletedTasks, "running": info.numActiveTasks})
    return {"stages": stages, "counts": dict(counts.value), "expected": expected}


@contextmanager
def watch(sc: Any, counts: Any, progress: Callable[[dict[str, Any]], None] | None,
          every: float = 0.5, expected: int | None = None) -> Iterator[None]:
    """Call `progress(snapshot)` every `every` seconds while the block runs, and once at the end."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                progress(snapshot(sc, counts, expected))
            except Exception:  # progress display must never fail the job
                log.debug("progress display failed", exc_info=True)

    thread = threading.Thread(target=loop, name="screen-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        progress(snapshot(sc, counts, expected) | {"final": True})


class ProgressView:
    """Draws snapshots on a console: live on a terminal, a line every 10 s otherwise (logs, CI)."""

    def __init__(self, console: Any, trials: dict[str, str], every: float = 10.0) -> None:
        import time

        self.console = console
        self.trials = trials
        self.every = every
        self._time = time.monotonic
        self._last: float | None = None
        self._live: Any = None
        if console.is_terminal:
            from rich.live import Live

            self._live = Live(console=console, refresh_per_second=2, transient=False)
            self._live.start()

    def text(self, snap: dict[str, Any]) -> str:
        counts = snap["counts"]
        stages = "; ".join(f"stage {s['id']} {s['done']}/{s['tasks']} tasks ({s['running']} running)"
                           for s in snap["stages"]) or ("done" if snap.get("final") else "starting")
        expected = snap.get("expected")
        of = f" of {expected:,}" if expected else ""
        head = (f"screened {counts.get('patients', 0):,}{of} patients, {counts.get('in-population', 0):,} in the "
                f"population, {counts.get('not-screened', 0):,} not screened | {stages}")
        lines = [head]
        for tid in self.trials:
            lines.append(f"  {tid}: {counts.get(f'likely-eligible:{tid}', 0):,} likely, "
                         f"{counts.get(f'possibly-eligible:{tid}', 0):,} possibly eligible")
        return "\n".join(lines)

    def update(self, snap: dict[str, Any]) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(self.text(snap)))
            return
        now = self._time()
        if snap.get("final") or self._last is None or now - self._last >= self.every:
            self._last = now
            self.console.print(self.text(snap), markup=False, highlight=False)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
