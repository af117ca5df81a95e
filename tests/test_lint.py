"""The code passes the project's linter and type checker (configured in pyproject.toml), so that
`pytest` (the README's test command, and CI) fails on a lint or typing regression."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", "cds", "tests", "bench")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_mypy_strict_on_the_package() -> None:
    result = _run("mypy")  # files, strictness and plugins come from [tool.mypy]
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
