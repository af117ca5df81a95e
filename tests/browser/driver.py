"""Python side of tests/browser/driver.mjs: one headless Chromium for a whole test session.

    with Browser() as browser:
        browser.call("render_cards", cards=[...])   # -> {"heights": [...], "total": ...}

Needs Debian's `chromium` (/usr/bin/chromium) and `npm ci --prefix tests/browser` (both in the
README's install command). The driver prints one JSON line when Chromium is up; we wait for that
line, never sleep. It exits when its stdin closes, so a killed test run leaves no browser behind.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

DRIVER_DIR = Path(__file__).parent
SCRIPT = DRIVER_DIR / "driver.mjs"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts"


class BrowserError(RuntimeError):
    """A driver command failed (the message carries the browser-side stack)."""


class Browser:
    def __init__(self, start_timeout: float = 120.0) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._next = 0
        self._lock = threading.Lock()
        self._start_timeout = start_timeout
        self.version: str | None = None

    def start(self) -> Self:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"{CHROMIUM} is missing: the README's install command installs Debian's chromium")
        if not (DRIVER_DIR / "node_modules" / "playwright-core").is_dir():
            raise RuntimeError("tests/browser/node_modules is missing: run `npm ci --prefix tests/browser`")
        self._proc = subprocess.Popen([node, str(SCRIPT)], cwd=DRIVER_DIR, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()
        ready = self._get(self._start_timeout)
        if ready is None or json.loads(ready).get("event") != "ready":
            self.stop()
            raise RuntimeError("browser driver did not start:\n" + "".join(self._stderr[-40:]))
        self.version = json.loads(ready).get("chromium")
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("{"):
                self._lines.put(line)
        self._lines.put(None)

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def _get(self, timeout: float) -> str | None:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def call(self, op: str, timeout: float = 180.0, **args: Any) -> Any:
        """Run one driver command; its result, or BrowserError with the browser-side reason."""
        with self._lock:
            if self._proc is None or self._proc.stdin is None:
                raise RuntimeError("browser not started")
            self._next += 1
            msg_id = self._next
            self._proc.stdin.write(json.dumps({"id": msg_id, "op": op, **args}) + "\n")
            self._proc.stdin.flush()
            while True:
                line = self._get(timeout)
                if line is None:
                    raise BrowserError(f"{op}: no answer from the browser driver\n" + "".join(self._stderr[-40:]))
                reply = json.loads(line)
                if reply.get("id") == msg_id:
                    break
        if not reply.get("ok"):
            raise BrowserError(f"{op}: {reply.get('error')}")
        return reply.get("result")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
