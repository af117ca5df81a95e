"""The same job on a real Spark standalone cluster (master + two workers): the same output as local mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cds.screen import ScreenResult
from tests.conftest import EVAL_AT

from .conftest import Population


def test_screen_on_a_standalone_cluster_writes_what_local_mode_writes(standalone_cluster: Any, screened: ScreenResult,
                                                                      generated: Population, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("trial-cds")), "screen", str(generated.path), "--out", str(out),
         "--at", EVAL_AT.isoformat(), "--master", standalone_cluster.url],
        env=standalone_cluster.env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["master"] == standalone_cluster.url and run["defaultParallelism"] == 2
    for worker in standalone_cluster.workers:  # each worker ran an executor of this application
        worker.wait_for(r"Asked to launch executor", timeout=5)
    for name in ("summary.json", "worklist.csv", "not-screened.csv", "report.html"):
        assert (out / name).read_bytes() == (screened.out / name).read_bytes(), name
    assert "patients screened" in done.stderr and "written to" in done.stderr
