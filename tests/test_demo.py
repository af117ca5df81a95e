"""The README's main job: `trial-cds demo --once` serves the hook and shows real cards."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from cds.paths import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_once_shows_cards_for_the_likely_patient_and_none_without_sle() -> None:
    proc = subprocess.run([sys.executable, "-m", "cds.cli", "demo", "--once", "--port", str(_free_port())],
                          capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, "COLUMNS": "120"})
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:] + out[-2000:]
    likely = re.search(r"adult-likely .*?: (\d+) card\(s\)", out)
    assert likely and int(likely.group(1)) >= 1, out[:2000]
    assert "Likely eligible:" in out
    assert re.search(r"no-sle .*?: 0 card\(s\)", out)
    assert "curl -s -X POST http://127.0.0.1:" in out
