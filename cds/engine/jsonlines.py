"""One client for the Node processes the engine owns (CQL workers and the translator).

Both speak the same protocol: one JSON object per line on stdin, one reply line on stdout
carrying the request's `id`. This module owns what every such child needs: a reader thread
(so a call can wait with a timeout), the reply-id check (a reply out of turn means the
process is broken), stderr drained into the log (the last lines are kept and quoted when the
process dies, so a worker that refused to start says why), and a hard kill.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import EngineError, EngineTimeout

log = logging.getLogger(__name__)

_EOF = object()
_ids = itertools.count(1)


class JsonLinesProcess:
    """A child process answering JSON lines. Not thread-safe: one caller at a time."""

    def __init__(self, command: Sequence[str], *, cwd: Path, name: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
            cwd=str(cwd),
            env={**os.environ, **env} if env else None,
        )
        self.lines: queue.Queue[Any] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.calls = 0
        threading.Thread(target=self._read_stdout, daemon=True, name=f"{name}-stdout").start()
        threading.Thread(target=self._drain_stderr, daemon=True, name=f"{name}-stderr").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        self.lines.put(_EOF)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw in self.proc.stderr:
                line = raw.rstrip()
                if not line:
                    continue
                self.stderr_tail.append(line)
                level = logging.WARNING if line.lower().startswith(("warning", "error")) else logging.DEBUG
                log.log(level, "%s %s: %s", self.name, self.pid, line)
        except (OSError, ValueError):
            pass

    def _why_dead(self) -> str:
        lines = list(self.stderr_tail)
        errors = [ln for ln in lines if ln.lower().startswith("error")]
        tail = " | ".join(errors[-2:] or lines[-3:])
        return f"; its last words: {tail[-600:]}" if tail else ""

    def call(self, message: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request, wait for the reply with the same id; raise EngineError on any fault
        (EngineTimeout when `timeout` seconds pass). The reply is returned as sent, ok or not."""
        request_id = next(_ids)
        line = json.dumps({**message, "id": request_id}, separators=(",", ":"), default=str)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise EngineError(f"{self.name} {self.pid} is gone ({exc.__class__.__name__}){self._why_dead()}") from exc
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineTimeout(f"{self.name} {self.pid} did not answer within {timeout:.1f} s")
            try:
                raw = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if raw is _EOF:
                try:  # stdout closes a moment before the process is reaped: wait for its status
                    code = self.proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    code = None
                time.sleep(0.05)  # let the stderr thread take the last lines
                raise EngineError(f"{self.name} {self.pid} exited (code {code}) before answering{self._why_dead()}")
            try:
                reply = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise EngineError(f"{self.name} {self.pid} wrote a line that is not JSON: {raw[:80]!r}") from exc
            if not isinstance(reply, dict) or reply.get("id") != request_id:
                raise EngineError(f"{self.name} {self.pid} answered out of turn: {str(raw)[:80]!r}")
            self.calls += 1
            return reply

    def kill(self) -> None:
        """SIGKILL (if still running), reap, close the pipes."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel did not reap in time
            log.error("%s %s did not die after SIGKILL", self.name, self.proc.pid)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass

    def close_stdin(self) -> None:
        """Ask for a clean exit (the children exit when stdin closes)."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass

    def close(self, timeout: float = 5.0) -> None:
        """Clean exit if it comes within `timeout`, else kill."""
        self.close_stdin()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self.kill()
