"""Screening fixtures: one generated population, one local Spark session, one screening run.

Session-scoped so the whole directory pays once for the JVM (about 5 s), the CQL workers inside
Spark's reused Python workers, and the run every test reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyspark", reason="the [screen] extra (pyspark) is not installed")

from cds.catalogue import Catalogue
from cds.paths import BUNDLES_DIR
from cds.screen import ScreenResult, run_screen, spark_session
from cds.synthetic import population
from tests.conftest import EVAL_AT

PATIENTS = 300
SLE_RATE = 0.35  # enriched so that every SLE profile shows up in a few hundred patients


@dataclass(frozen=True)
class Population:
    path: Path
    manifest: dict[str, Any]


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    return Catalogue.from_directory(BUNDLES_DIR)


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Population:
    out = tmp_path_factory.mktemp("population")
    manifest = population.write(out, population.Options(PATIENTS, EVAL_AT, seed=7, sle_rate=SLE_RATE, defects=True),
                                processes=1)
    return Population(out, manifest)


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    session = spark_session("local[2]", app_name="trial-cds tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def screened(spark: Any, generated: Population, catalogue: Catalogue,
             tmp_path_factory: pytest.TempPathFactory) -> ScreenResult:
    return run_screen(spark, str(generated.path), tmp_path_factory.mktemp("screened"), catalogue, EVAL_AT)


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """Every resource of an export, read plainly (the tests' own reader, not the job's)."""
    out = []
    for file in sorted(path.glob("*.ndjson")):
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Spark standalone master with two one-core workers, from the pyspark package."""
    from .cluster import StandaloneCluster

    with StandaloneCluster(2, tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster
