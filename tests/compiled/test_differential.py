"""The compiled engine against the reference engine: the same value for every define of every
library, on every committed synthetic patient and on 10,000 generated records.

The reference engine (cql-execution's Executor) is the oracle. The compiled engine runs alone
here (`fallback: false`): an unsupported construct, a Divergence or an error of its own is a
failure, never answered by the reference engine behind the test's back.

- Synthetic patients go the production way (Engine: trimmed bundle, one JSON line per patient)
  and every define's value is compared decoded (cds.engine.values).
- Generated records (tests/compiled/records.py) go in batches through the worker's `compare`
  op, which runs both engines on each record and compares every define's encoded JSON (the text
  the Python side decodes; equal text means equal decoded values); differences come back with
  both values and are decoded here for the report. Two workers share the batches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from cds.engine.engine import execution_time
from cds.engine.pool import WorkerPool
from cds.engine.trim import trim_bundle
from cds.engine.values import decode
from cds.paths import BUNDLES_DIR
from tests.compiled.conftest import Rules
from tests.compiled.records import RecordGenerator, code_pools, covered

AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
RECORDS = int(os.environ.get("TRIAL_CDS_DIFFERENTIAL_RECORDS", "10000"))
BATCH = 250


@pytest.fixture(scope="module")
def names(rules: Rules) -> list[str]:
    return rules.names


@pytest.fixture(scope="module")
def pool(rules: Rules) -> Iterator[WorkerPool]:
    # Both engines live in every worker (one code service: the catalogue's value sets); two
    # workers share the batches.
    with WorkerPool(rules.libraries, size=2, engine="compiled", value_sets=rules.value_sets, timeout=600.0,
                    start_timeout=120.0) as p:
        yield p


@pytest.fixture(scope="module")
def generator(rules: Rules) -> RecordGenerator:
    return RecordGenerator(rules.requirements(), code_pools(rules.libraries, rules.value_sets), AT)


def test_every_library_is_compiled(pool: WorkerPool, names: list[str]) -> None:
    assert pool.load_info["engine"] == "compiled"
    assert pool.load_info["fallback"] == {}, "libraries left to the reference engine"
    assert sorted(pool.load_info["compiled"]) == names


def _patients() -> list[tuple[str, dict[str, Any]]]:
    paths = sorted((BUNDLES_DIR / "patients").glob("*.json"))
    return [(p.stem, json.loads(p.read_text(encoding="utf-8"))) for p in paths]


def test_synthetic_patients_every_define_equal(pool: WorkerPool, rules: Rules, names: list[str]) -> None:
    patients = _patients()
    assert len(patients) >= 20
    requirements = rules.requirements()
    when = execution_time(AT)
    compared = 0
    for name, bundle in patients:
        sent = trim_bundle(bundle, requirements)
        by_engine = {}
        for engine in ("reference", "compiled"):
            reply = pool.request({"op": "evaluate", "libraries": names, "bundle": sent, "executionDateTime": when,
                                  "engine": engine, "fallback": False, "includePatient": True})
            assert reply["ran"][engine] == names
            by_engine[engine] = {lib: {d: decode(v) for d, v in defs.items()} for lib, defs in reply["results"].items()}
        reference, compiled = by_engine["reference"], by_engine["compiled"]
        for lib in names:
            assert compiled[lib].keys() == reference[lib].keys(), (name, lib)
            for define, value in reference[lib].items():
                assert compiled[lib][define] == value, f"{name}: {lib}.{define}"
                compared += 1
    print(f"\n{len(patients)} synthetic patients, {compared} define values equal on both engines")


def test_generated_records_cover_every_retrieve(generator: RecordGenerator, rules: Rules) -> None:
    records = generator.records(0, 2000)
    missing = covered(records, rules.requirements())
    assert {rtype: sorted(codes) for rtype, codes in missing.items() if codes} == {}
    text = json.dumps(records, ensure_ascii=False)
    # the corners the generator exists for
    for piece in ('"comparator"', "+05:30", '"effectivePeriod"', '"valueString"', '"onsetAge"',
                  '"medicationReference"', "entered-in-error", '"foo bar"', "µmol/L", '"boundsPeriod"'):
        assert piece in text, piece


def _compare(pool: WorkerPool, generator: RecordGenerator, names: list[str], start: int) -> dict[str, Any]:
    count = min(BATCH, RECORDS - start)
    batch = [{"bundle": b, "executionDateTime": generator.execution_time(start + k)}
             for k, b in enumerate(generator.records(start, count))]
    reply = pool.request({"op": "compare", "libraries": names, "records": batch, "limit": 5}, timeout=900.0)
    for m in reply["mismatches"]:
        m["index"] += start
    return reply


def test_generated_records_every_define_equal(pool: WorkerPool, generator: RecordGenerator, names: list[str]) -> None:
    assert RECORDS >= 10_000 or "TRIAL_CDS_DIFFERENTIAL_RECORDS" in os.environ
    with ThreadPoolExecutor(pool.size) as ex:
        replies = list(ex.map(lambda s: _compare(pool, generator, names, s), range(0, RECORDS, BATCH)))
    records = sum(r["records"] for r in replies)
    defines = sum(r["defines"] for r in replies)
    mismatches = [m for r in replies for m in r["mismatches"]]
    divergences = sum(r["divergences"] for r in replies)
    both_failed = sum(r["bothFailed"] for r in replies)
    ref_ms = sum(r["referenceMs"] for r in replies)
    comp_ms = sum(r["compiledMs"] for r in replies)
    print(f"\n{records} generated records, {defines} define values compared; both engines refused "
          f"{both_failed} records alike; reference {ref_ms / records:.1f} ms, compiled {comp_ms / records:.1f} ms "
          "per record (all libraries as roots)")
    assert records == RECORDS
    report = [f"record {m['index']} {m['library']}.{m['define']}: reference {decode(m['reference'])!r} "
              f"!= compiled {decode(m['compiled'])!r}" for m in mismatches[:10]]
    assert not mismatches, "\n".join(report)
    assert divergences == 0
