"""Fixtures for per-criterion trial tests: one engine over the committed rules ELM."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cds.catalogue import Catalogue
from cds.engine import Engine
from cds.paths import BUNDLES_DIR


@pytest.fixture(scope="session")
def rules_engine(compiled_rules: dict[str, dict[str, Any]]) -> Iterator[Engine]:
    engine = Engine(compiled_rules, pool_size=1).start()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    """The catalogue as the service loads it (fhir_bundles/): trials, libraries, value sets."""
    return Catalogue.from_directory(BUNDLES_DIR)
