"""The official CQL conformance suite through the project's pipeline (translate -> execute).

One test per group (XML file) of the vendored suite, tests/conformance/cql-tests (or
$TRIAL_CDS_CQL_TESTS). Each prints `group: N passed, M failed (K known)` and fails when a test
outside the known-failure list (tests/conformance/known_failures.txt) fails, so the pass count
can only go up. A known failure that passes now is reported ("now passing, remove from the list")
but does not fail the run. Refresh the list with
`python -m tests.conformance.harness --write-known-failures`. The suite is part of the
repository, so it never skips: a missing suite is a failure.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from decimal import Decimal

import pytest

from cds.engine.values import CqlDate, CqlDateTime, CqlTime, Interval, Quantity, Uncertainty
from tests.conformance import harness as cf

SUITE = cf.suite_dir()
ABSENT = ("the CQL conformance suite is absent: no cql/*.xml under "
          + (f"${cf.ENV_VAR}={os.environ[cf.ENV_VAR]}" if os.environ.get(cf.ENV_VAR)
             else f"{cf.VENDORED_SUITE} (it is part of the repository: restore it)"))
GROUPS = sorted(p.stem for p in (SUITE / "cql").glob("*.xml")) if SUITE else ["(suite absent)"]


# -- the comparison itself (no suite needed) ------------------------------------------------


def num(kind: str | None, value: str) -> cf.Num:
    return cf.Num(kind, Decimal(value))


def test_numbers_keep_their_cql_type() -> None:
    assert cf.matches(num("Decimal", "1"), num("Decimal", "1.0"))
    assert not cf.matches(num("Integer", "1"), num("Decimal", "1.0"))  # Integer result, Decimal expected
    assert cf.matches(num("Decimal", "10"), num("Integer", "10"))  # the output literal converts implicitly
    assert not cf.matches(num("Decimal", "0.30000000000000004"), num("Decimal", "0.3"))  # no tolerance
    assert not cf.matches(True, num("Integer", "1")) and not cf.matches(num("Integer", "1"), True)
    assert not cf.matches(None, False) and cf.matches(None, None)
    assert not cf.matches(cf.Wrong("Long", "1"), cf.Wrong("Long", "1"))  # a Long the engine left a string


def test_typed_uses_the_static_type() -> None:
    assert cf.typed(1, "Decimal") == num("Decimal", "1")
    assert cf.typed(Decimal("0.5"), "Integer") == num("Decimal", "0.5")  # fractional under Integer: not Integer
    assert isinstance(cf.typed("12", "Long"), cf.Wrong)
    assert cf.typed([1, 2], ("List", "Integer")) == [num("Integer", "1"), num("Integer", "2")]
    assert cf.typed({"a": 1}, ("Tuple", {"a": "Decimal"})) == {"a": num("Decimal", "1")}


def test_intervals_compare_as_cql_equality() -> None:
    i = lambda lo, hi, lc=True, hc=True: Interval(lo, hi, lc, hc)  # noqa: E731
    assert cf.matches(i(num("Integer", "1"), num("Integer", "4"), hc=False), i(num("Integer", "1"), num("Integer", "3")))
    assert not cf.matches(i(num("Integer", "1"), num("Integer", "4")), i(num("Integer", "1"), num("Integer", "3")))
    assert cf.matches(i(num("Decimal", "1"), num("Decimal", "4"), hc=False),
                      i(num("Decimal", "1"), num("Decimal", "3.99999999")))
    assert cf.matches(i(CqlDateTime("2012-01-05"), CqlDateTime("2012-01-07"), hc=False),
                      i(CqlDateTime("2012-01-05"), CqlDateTime("2012-01-06")))
    assert cf.matches(i(CqlTime("10:59:59.999"), CqlTime("11:59:59.999"), lc=False),
                      i(CqlTime("11:00:00.000"), CqlTime("11:59:59.999")))
    assert not cf.matches(i(num("Integer", "5"), None, hc=False), i(num("Integer", "5"), None))  # unknown vs unbounded
    assert cf.matches(Uncertainty(num("Integer", "4"), num("Integer", "5")), i(num("Integer", "4"), num("Integer", "5")))
    assert not cf.matches(i(num("Integer", "4"), num("Integer", "5")), Uncertainty(num("Integer", "4"), num("Integer", "5")))


def test_dates_times_and_quantities() -> None:
    assert cf.matches(CqlDateTime("2012-01-01"), CqlDate("2012-01-01"))  # Date -> DateTime
    assert not cf.matches(CqlDate("2012-01-01"), CqlDateTime("2012-01-01"))
    assert not cf.matches(CqlDateTime("2012-01-01T00:00:00.000+00:00"), CqlDateTime("2012-01-01T00:00:00.000+01:00"))
    assert not cf.matches(CqlDateTime("2012-01-01T10"), CqlDateTime("2012-01-01T10:00"))  # precision counts
    assert cf.matches(Quantity(Decimal("1"), "cm"), Quantity(Decimal("1.0"), "cm"))
    assert not cf.matches(Quantity(Decimal("1"), "cm"), Quantity(Decimal("1"), "mm"))
    assert cf.literal_value("'it\\'s'") == (True, "it's")
    assert cf.literal_value("5.0 'mg'") == (True, Quantity(Decimal("5.0"), "mg"))
    assert cf.literal_value("{1, 2}") == (False, None)


@pytest.mark.parametrize("engine", cf.ENGINES)
def test_known_failure_list_is_well_formed(engine: str) -> None:
    path = cf.KNOWN_FAILURES_FILES[engine]
    known = cf.read_known_failures(path)  # raises on a malformed line
    lines = [ln.split()[0] for ln in path.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == sorted(lines), "keep the known-failure list sorted"
    assert len(lines) == len(known), "a test is listed twice"


def test_compiled_engine_may_fail_only_where_the_reference_does() -> None:
    """Its known failures are a subset of the reference engine's (each run also checks the
    compiled engine's failures against the reference engine's outcome of the same test)."""
    compiled = cf.read_known_failures(cf.KNOWN_FAILURES_FILES["compiled"])
    reference = cf.read_known_failures(cf.KNOWN_FAILURES_FILES["reference"])
    assert sorted(set(compiled) - set(reference)) == []


# -- the suite -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite() -> dict[str, list[cf.ConformanceTest]]:
    if SUITE is None:
        pytest.fail(ABSENT, pytrace=False)
    return cf.load_suite(SUITE)


@pytest.fixture(scope="module")
def runner(suite: dict[str, list[cf.ConformanceTest]]) -> Iterator[cf.ConformanceRunner]:
    # No skip when Node or the engine packages are missing: the whole project needs them, so a
    # broken install must fail here rather than pass silently. Both engines run every test.
    r = cf.ConformanceRunner(engines=cf.ENGINES)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def summary(suite: dict[str, list[cf.ConformanceTest]]) -> Iterator[dict[str, dict[str, cf.GroupResult]]]:
    results: dict[str, dict[str, cf.GroupResult]] = {e: {} for e in cf.ENGINES}
    yield results
    for engine, by_group in results.items():
        if not by_group:
            continue
        outcomes = [o for r in by_group.values() for o in r.outcomes]
        passed = sum(o.passed for o in outcomes)
        path = cf.KNOWN_FAILURES_FILES[engine]
        known = cf.read_known_failures(path)
        causes: dict[str, int] = {}
        for o in outcomes:
            if not o.passed:
                causes[o.cause or "?"] = causes.get(o.cause or "?", 0) + 1
        seconds = sum(r.seconds for r in by_group.values())
        total = sum(len(t) for t in suite.values())
        print(f"\nCQL conformance, {engine} engine: {passed} passed, {len(outcomes) - passed} failed of "
              f"{len(outcomes)} run ({total} in the suite, {len(by_group)} groups) in {seconds:.0f} s; "
              "failures by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(causes.items())))
        ids = {o.id for o in outcomes}
        if len(by_group) == len(suite):
            stale = sorted(k for k in known if k not in ids)
            if stale:
                print("known failures that name no test of the suite (remove them): " + ", ".join(stale))
                warnings.warn(f"{path.name} names tests the suite does not have: " + ", ".join(stale),
                              stacklevel=1)


@pytest.mark.conformance
@pytest.mark.parametrize("group", GROUPS)
def test_group(group: str, suite: dict[str, list[cf.ConformanceTest]], runner: cf.ConformanceRunner,
               summary: dict[str, dict[str, cf.GroupResult]]) -> None:
    by_engine = runner.run_group(group, suite[group])
    problems = []
    for engine, result in by_engine.items():
        summary[engine][group] = result
        path = cf.KNOWN_FAILURES_FILES[engine]
        known = cf.read_known_failures(path)
        failed = result.failed
        new = [o for o in failed if o.id not in known]
        fixed = [o for o in result.passed if o.id in known]
        print(f"\n{group} ({engine}): {len(result.passed)} passed, {len(failed)} failed "
              f"({len(failed) - len(new)} known) in {result.seconds:.1f} s")
        for o in fixed:
            print(f"  now passing on the {engine} engine, remove from {path.name}: {o.id}")
        if fixed:
            warnings.warn(f"{group}: {len(fixed)} known failure(s) pass now on the {engine} engine, remove them "
                          f"from {path.name}: " + ", ".join(o.id for o in fixed), stacklevel=1)
        if new:
            problems.append(f"{len(new)} test(s) of {group} fail on the {engine} engine outside {path.name}:\n"
                            + "\n".join(f"  {o.id}  {o.cause}  # {o.detail}" for o in new))
    # The compiled engine is an optimisation of the reference engine, never a weaker one.
    reference_failed = {o.id for o in by_engine["reference"].failed}
    worse = [o for o in by_engine["compiled"].failed if o.id not in reference_failed]
    if worse:
        problems.append("the compiled engine fails where the reference engine passes:\n"
                        + "\n".join(f"  {o.id}  {o.cause}  # {o.detail}" for o in worse))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
