"""A Spark standalone cluster (one master, N workers) started from the pyspark package, for tests.

Each daemon runs in the foreground under `spark-class`; readiness is the daemon's own log line
("... elected leader! New state: ALIVE", "Successfully registered with master"), awaited as an
event, never slept for. Everything listens on 127.0.0.1 with ports the system picks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Self

SPARK_CLASS = Path(sys.executable).with_name("spark-class")


class Daemon:
    """A process whose output lines are kept and matched against awaited patterns."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<exited>")
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 180.0) -> re.Match[str]:
        regex = re.compile(pattern)
        with self._cond:
            found: list[re.Match[str]] = []

            def match() -> bool:
                found[:] = [m for m in (regex.search(x) for x in self.lines) if m][:1]
                return bool(found) or (bool(self.lines) and self.lines[-1] == "<exited>")

            if not self._cond.wait_for(match, timeout=timeout) or not found:
                tail = "\n".join(self.lines[-30:])
                raise RuntimeError(f"{self.name}: no line matching {pattern!r} within {timeout:.0f} s:\n{tail}")
            return found[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class StandaloneCluster:
    def __init__(self, workers: int, work_dir: Path) -> None:
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
                    "SPARK_WORKER_DIR": str(work_dir)}
        self.daemons: list[Daemon] = []
        self.url = ""
        try:
            master = self._start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                            "--port", "0", "--webui-port", "0"])
            self.url = master.wait_for(r"Starting Spark master at (spark://\S+)").group(1)
            master.wait_for(r"New state: ALIVE")
            for i in range(workers):
                self._start(f"worker-{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                            "--port", "0", "--webui-port", "0", "--cores", "1", "--memory", "1g",
                                            "--work-dir", str(work_dir / f"worker-{i}"), self.url])
            for w in self.workers:
                w.wait_for(r"Successfully registered with master")
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, args: list[str]) -> Daemon:
        daemon = Daemon(name, [str(SPARK_CLASS), *args], self.env)
        self.daemons.append(daemon)
        return daemon

    @property
    def master(self) -> Daemon:
        return self.daemons[0]

    @property
    def workers(self) -> list[Daemon]:
        return self.daemons[1:]

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
