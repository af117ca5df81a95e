"""Fixtures for per-criterion trial tests: one engine over the committed rules ELM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cds.engine import Engine


@pytest.fixture(scope="session")
def rules_engine(compiled_rules: dict[str, dict[str, Any]]) -> Iterator[Engine]:
    engine = Engine(compiled_rules, pool_size=1).start()
    try:
        yield engine
    finally:
        engine.close()
