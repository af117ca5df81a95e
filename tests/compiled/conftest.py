"""What the compiled-engine tests share: the committed rules and the catalogue's value sets, loaded
the way the service loads them (cds.engine.Engine)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from cds.engine import elm as elm_mod
from cds.engine import load_elm_dir
from cds.paths import ELM_DIR
from cds.terminology import committed_value_sets, cql_value_sets


@dataclass(frozen=True)
class Rules:
    libraries: dict[str, dict[str, Any]]
    value_sets: dict[str, dict[str, list[dict[str, str]]]]  # the worker's `valueSets`
    codes: Mapping[str, list[tuple[str, str]]]  # url -> (system, code), for data requirements

    @property
    def names(self) -> list[str]:
        return sorted(self.libraries)

    def requirements(self) -> dict[str, elm_mod.TypeRequirement]:
        return elm_mod.data_requirements(self.names, self.libraries, self.codes)


def load_rules() -> Rules:
    libraries = load_elm_dir(ELM_DIR)
    declared = {url for doc in libraries.values() for url in elm_mod.value_set_urls(doc)}
    expansions = {url: vs for url, vs in committed_value_sets().items() if url in declared}
    codes = {url: [(c.system, c.code) for c in vs.codes] for url, vs in expansions.items()}
    return Rules(libraries, cql_value_sets(expansions), codes)


@pytest.fixture(scope="session")
def rules() -> Rules:
    return load_rules()
