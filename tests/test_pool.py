"""Worker faults, with real processes: the caller gets a clear error in time, the pool recovers.

Slow and hanging calls are real CQL evaluations in the reference engine: "Pairs" is a
two-source query over `expand { Interval[1, N] }`, quadratic in N (about 1.7 s at N = 800 and
4 s at N = 1200 on a 2-core machine), so N picks the duration and the default N = 1 keeps the
pool's warm-up instant. Misbehaviour the real worker cannot be made to show (a line that is
not JSON, an answer out of turn) comes from tests/fixtures/fake_worker.py.

Every worker process the pool starts in this module is recorded; when the module ends, none
may be alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cds.engine import pool as pool_mod
from cds.engine.pool import EngineError, EngineTimeout, EngineUnavailable, WorkerPool
from cds.engine.translator import Translator

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAKE_WORKER = [sys.executable, str(FIXTURES / "fake_worker.py")]
ROOT = Path(__file__).resolve().parents[1]
AT = "2026-01-01T00:00:00Z"

PROBE_CQL = """
library Probe version '1'

parameter "N" Integer default 1

define "Next": "N" + 1
define "Pairs":
  Count(
    from (expand { Interval[1, "N"] }) A, (expand { Interval[1, "N"] }) B
    where end of A = end of B
    return A
  )
"""
QUICK = {"Probe": {"N": 3}}
SLOW = {"Probe": {"N": 1500}}  # ~6 s of evaluation: long enough to kill the worker mid-call
HANG = {"Probe": {"N": 50000}}  # hours

# Every worker pid started in this module (and by the child process of the hard-kill test).
SPAWNED: set[int] = set()


# -- process helpers --------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()  # fields from the state on (the name may hold spaces)


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie waits for PID 1 to reap it).

    A killed Node process shows its main thread as a zombie while its other threads are still
    being torn down, and cannot be reaped until they are: count those as running too.
    """
    fields = _stat(pid)
    return fields is not None and (fields[0] not in ("Z", "X") or int(fields[17]) > 1)


def is_worker(pid: int) -> bool:
    """A running worker process (guards the final check against pid reuse)."""
    if not running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"worker.mjs" in cmdline or b"fake_worker.py" in cmdline


def reaped(pid: int) -> bool:
    """Gone for good: not even a zombie is left (the pool waited for its child)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def cpu_ticks(pid: int) -> int:
    fields = _stat(pid)
    return 0 if fields is None else int(fields[11]) + int(fields[12])  # utime + stime


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_worker_survives() -> Iterator[None]:
    """Record each worker the pool starts; at the end of the module none may be alive."""
    original = pool_mod.JsonLinesProcess

    class RecordedWorker(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            SPAWNED.add(self.proc.pid)

    mp = pytest.MonkeyPatch()
    mp.setattr(pool_mod, "JsonLinesProcess", RecordedWorker)
    try:
        yield
    finally:
        mp.undo()
    survivors: list[int] = []
    deadline = time.monotonic() + 10.0
    while True:
        survivors = sorted(pid for pid in SPAWNED if is_worker(pid))
        if not survivors or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for pid in survivors:  # do not leave them behind even when failing
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert SPAWNED, "no worker was recorded: the recording hook is broken"
    assert not survivors, f"worker processes survived the test module: {survivors}"


@pytest.fixture(scope="module")
def probe_elm() -> dict[str, Any]:
    with Translator() as translator:
        t = translator.translate(PROBE_CQL)
    assert t.ok, [m.format("Probe") for m in t.errors]
    assert t.elm is not None
    return t.elm


@pytest.fixture
def make_pool(probe_elm: dict[str, Any]) -> Iterator[Callable[..., WorkerPool]]:
    pools: list[WorkerPool] = []

    def make(size: int = 1, **kwargs: Any) -> WorkerPool:
        libraries = kwargs.pop("libraries", None) or {"Probe": probe_elm}
        pool = WorkerPool(libraries, size=size, **kwargs)
        pools.append(pool)
        return pool.start()

    yield make
    for pool in pools:
        pool.close()


def fake_pool(make: Callable[..., WorkerPool], **kwargs: Any) -> WorkerPool:
    return make(libraries={"Fake": {"library": {"identifier": {"id": "Fake"}}}}, command=FAKE_WORKER, **kwargs)


def quick(pool: WorkerPool) -> dict[str, Any]:
    return pool.evaluate(["Probe"], None, AT, parameters=QUICK)["Probe"]


# -- tests --------------------------------------------------------------------------------------


def test_evaluates_and_close_leaves_no_process(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(size=2)
    pids = pool.pids
    assert len(pids) == 2 and all(is_worker(p) for p in pids)
    assert quick(pool) == {"Next": 4, "Pairs": 3}
    pool.close()
    assert pool.pids == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(EngineUnavailable):
        quick(pool)


def test_worker_killed_mid_call(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(size=1)
    [victim] = pool.pids
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = pool.evaluate(["Probe"], None, AT, parameters=SLOW, timeout=30)
        except BaseException as exc:
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    base = cpu_ticks(victim)
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    # The worker is mid-call once it has burnt 0.2 s of CPU on the request.
    wait_until(lambda: cpu_ticks(victim) >= base + 20, 10.0, "the worker to start evaluating")
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    caller.join(10)
    assert not caller.is_alive()
    error = outcome.get("error")
    assert isinstance(error, EngineError) and not isinstance(error, EngineTimeout), outcome
    assert f"worker {victim} exited" in str(error)
    # Generous for a loaded machine, and still far below the call's 30 s timeout it would otherwise wait.
    assert outcome["at"] - killed_at < 15.0, "the caller waited on a dead worker"
    assert reaped(victim)
    assert quick(pool)["Pairs"] == 3
    assert pool.pids and victim not in pool.pids


def test_hanging_call_times_out_and_worker_is_replaced(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(size=1)
    [victim] = pool.pids
    started = time.monotonic()
    with pytest.raises(EngineTimeout, match=r"timed out after 1\.0 s"):
        pool.evaluate(["Probe"], None, AT, parameters=HANG, timeout=1.0)
    elapsed = time.monotonic() - started
    # Not before the timeout; and it ends (the call would otherwise hang for ever): a generous deadline.
    assert 1.0 <= elapsed < 20.0, elapsed
    assert reaped(victim), "the hung worker was not killed"
    assert quick(pool)["Next"] == 4
    [successor] = pool.pids
    assert successor != victim


@pytest.mark.parametrize(
    ("mode", "message"),
    [("garbage", "not JSON"), ("wrong-id", "out of turn"), ("exit", "exited (code 3)")],
)
def test_broken_reply_is_an_error_and_worker_is_replaced(
    make_pool: Callable[..., WorkerPool], mode: str, message: str
) -> None:
    pool = fake_pool(make_pool, size=1, timeout=30.0)
    [victim] = pool.pids
    started = time.monotonic()
    with pytest.raises(EngineError, match=re.escape(message)) as info:
        pool.evaluate(["Fake"], None, AT, parameters={"Fake": {"mode": mode}})
    assert not isinstance(info.value, EngineTimeout)
    assert time.monotonic() - started < 15.0, "a broken reply must not wait for the 30 s timeout"
    assert reaped(victim)
    result = pool.evaluate(["Fake"], None, AT)["Fake"]
    assert result["Pid"] != victim and pool.pids == [result["Pid"]]


def test_error_reply_keeps_worker_in_service(make_pool: Callable[..., WorkerPool]) -> None:
    pool = fake_pool(make_pool, size=1)
    [pid] = pool.pids
    with pytest.raises(EngineError, match="fake worker: bad request"):
        pool.evaluate(["Fake"], None, AT, parameters={"Fake": {"mode": "error"}})
    assert pool.pids == [pid]
    # warm-up + the bad request + this one, all on the same process
    assert pool.evaluate(["Fake"], None, AT)["Fake"] == {"Pid": pid, "Calls": 3}


def test_bad_requests_to_real_worker(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(size=1)
    [pid] = pool.pids
    with pytest.raises(EngineError, match="unknown CQL libraries: Nope"):
        pool.evaluate(["Nope"], None, AT)
    # The same mistake past the Python check: the worker answers with an error and stays.
    with pytest.raises(EngineError, match="library Nope is not loaded") as info:
        pool.request({"op": "evaluate", "libraries": ["Nope"], "bundle": None, "executionDateTime": AT})
    assert not isinstance(info.value, EngineTimeout)
    with pytest.raises(EngineError, match="not an ISO date-time"):
        pool.request({"op": "evaluate", "libraries": ["Probe"], "bundle": None, "executionDateTime": "soon"})
    with pytest.raises(EngineError, match="unknown op"):
        pool.request({"op": "explode"})
    assert pool.pids == [pid]
    assert quick(pool)["Pairs"] == 3
    assert pool.pids == [pid]


def test_idle_worker_killed_is_replaced_on_next_use(make_pool: Callable[..., WorkerPool]) -> None:
    pool = make_pool(size=1)
    [victim] = pool.pids
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not running(victim), 5.0, "the killed worker to die")
    assert quick(pool)["Next"] == 4
    assert reaped(victim)
    assert pool.pids and victim not in pool.pids


def test_start_failure_is_unavailable_and_leaves_nothing(probe_elm: dict[str, Any]) -> None:
    pool = WorkerPool({"Probe": probe_elm}, size=2, start_timeout=60.0,
                      command=[sys.executable, "-c", "import sys; sys.exit(1)"])
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="failed to start"):
        pool.start()
    assert time.monotonic() - started < 30.0, "a worker that exits is not waited for until the 60 s start timeout"
    assert pool.pids == []


def test_hard_kill_of_python_leaves_no_node_orphans(probe_elm: dict[str, Any], tmp_path: Path) -> None:
    elm_file = tmp_path / "Probe.json"
    elm_file.write_text(json.dumps(probe_elm), encoding="utf-8")
    script = textwrap.dedent(
        """
        import json, sys, time
        from cds.engine.pool import WorkerPool
        pool = WorkerPool({"Probe": json.load(open(sys.argv[1]))}, size=2).start()
        print(json.dumps(pool.pids), flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(elm_file)], cwd=str(ROOT),
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 20.0)
        assert ready, "the child pool did not start in time"
        assert child.stdout is not None
        pids = json.loads(child.stdout.readline())
        SPAWNED.update(pids)
        assert len(pids) == 2 and all(is_worker(p) for p in pids)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        if child.stdout:
            child.stdout.close()
    wait_until(lambda: not any(running(p) for p in pids), 10.0, f"orphaned workers {pids} to exit")
