"""The official CQL conformance suite (cqframework/cql-tests) run through this project's pipeline.

Every test goes the way a rule does: CQL text -> the official translator -> ELM -> cql-execution
in the project's Node workers -> tagged JSON -> typed Python values (`cds.engine.values`).

How a group (one XML file of the suite) runs, cheaply:

1. One CQL library per group: each test becomes `define "tNNNN_expr": <expression>` and, for a
   test that must succeed, `define "tNNNN_out": <expected output>`. When the library does not
   translate, the error lines name the offending defines; those tests leave the library and it
   is translated again, until it translates. Each test that left is then translated alone, so
   a syntax error that spills into its neighbour cannot blame the wrong test.
2. The whole library is evaluated in one worker request (no FHIR data, a fixed UTC evaluation
   time). A runtime error in one define abandons the whole library in cql-execution, so the
   expressions expected to fail (`invalid`) run one per request, and when the batch still
   fails every define runs on its own (one small library per define, cut from the group ELM).
3. Expected and actual values are compared in Python, strictly (`matches`). The expected output
   is CQL literal text, evaluated by the same engine; simple literals (numbers, Longs, strings,
   booleans, null, quantities, Date/DateTime/Time) are also parsed here, so an engine that
   reads a literal wrongly cannot agree with itself, and an output that is not `null` must not
   evaluate to null. Numbers carry the translator's static result type (JSON cannot tell the
   Integer 1 from the Decimal 1.0): an Integer result never equals an expected Decimal, a Long
   the engine leaves as a string equals nothing, decimals compare exactly (no tolerance).
   The expected side may take CQL's implicit conversions (Integer -> Decimal/Long, Date ->
   DateTime), as it would in `expression = output`. Quantities compare value and unit;
   DateTime/Date/Time compare by the engine's ISO text (precision and offset included);
   intervals compare as CQL equality does, open bounds of discrete point types made closed
   (Interval[1, 5) = Interval[1, 4]); cql-execution's Uncertainty (no CQL literal) matches the
   closed Interval of its bounds, which is how the suite writes it; lists are ordered; tuples
   compare element by element; null equals only null. `OUTPUT_FIXES` corrects the few
   expected outputs that are not valid CQL, each with its reason.

`invalid` tests: `syntax` and `semantic` pass only when the translator rejects the expression;
`execution` passes only on a runtime error; `true` (the suite's older "the expression is in
error") passes on either.

Failures carry a one-word cause: `translator` (the expression does not translate, or an invalid
one does), `engine` (a runtime error, a wrong value, a missing error), `harness` (the expected
output cannot be represented: it does not translate or evaluate here).

Both engines run every test (the libraries are translated once): the reference engine and the
compiled engine, the latter alone (no fallback to the reference: a library it does not compile
fails its tests). Each has its own known-failure list; the compiled engine's may not hold a
test the reference engine passes.

`python -m tests.conformance.harness` prints pass/fail counts per group; `--write-known-failures`
rewrites the known-failure list (tests/conformance/known_failures.txt).

The suite itself is vendored beside this module (`cql-tests/`, Apache-2.0), so it runs on every
clone; `$TRIAL_CDS_CQL_TESTS` points at another copy.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from cds.engine.pool import ENGINES, EngineError, EngineTimeout, EngineUnavailable, WorkerPool
from cds.engine.translator import Translation, Translator
from cds.engine.values import (
    CqlDate,
    CqlDateTime,
    CqlTime,
    Interval,
    Quantity,
    Uncertainty,
    decode,
)

ENV_VAR = "TRIAL_CDS_CQL_TESTS"
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
VENDORED_SUITE = HERE / "cql-tests"
KNOWN_FAILURES_FILE = HERE / "known_failures.txt"
KNOWN_FAILURES_FILES = {"reference": KNOWN_FAILURES_FILE, "compiled": HERE / "known_failures_compiled.txt"}
CAUSES = ("translator", "engine", "harness")
# A fixed evaluation time in UTC: the suite's expected DateTimes without an offset are taken to
# be in the evaluation's offset, and its literal outputs use +00:00 / Z.
EXECUTION_DATETIME = "2026-01-01T00:00:00.000Z"
NS = {"t": "http://hl7.org/fhirpath/tests"}
ELM_TYPES = "{urn:hl7-org:elm-types:r1}"


# -- the suite ---------------------------------------------------------------------------------


def suite_dir() -> Path | None:
    """The suite's folder (holding `cql/*.xml`): $TRIAL_CDS_CQL_TESTS when set (the suite's folder
    or its cql/ folder), else the copy vendored beside this module; None when absent."""
    env = os.environ.get(ENV_VAR)
    candidates = [Path(env)] if env else [VENDORED_SUITE]
    for c in candidates:
        if (c / "cql").is_dir() and any((c / "cql").glob("*.xml")):
            return c
        if c.is_dir() and c.name == "cql" and any(c.glob("*.xml")):
            return c.parent
    return None


@dataclass(frozen=True)
class ConformanceTest:
    group: str  # the XML file's stem, e.g. CqlArithmeticFunctionsTest
    section: str  # the <group> inside the file, e.g. Abs
    name: str
    expression: str
    outputs: tuple[tuple[str, str | None], ...] = ()  # (text, type attribute)
    invalid: str | None = None  # None, "true", "syntax", "semantic", "execution"

    @property
    def id(self) -> str:
        return f"{self.group}.{self.name}"


def load_group(path: Path) -> list[ConformanceTest]:
    root = ET.parse(path).getroot()
    tests = []
    for g in root.findall("t:group", NS):
        for t in g.findall("t:test", NS):
            e = t.find("t:expression", NS)
            assert e is not None, f"{path.name}: test {t.get('name')} has no expression"
            invalid = e.get("invalid")
            if invalid in (None, "", "false"):
                invalid = None
            outputs = tuple(((o.text or "").strip(), o.get("type")) for o in t.findall("t:output", NS))
            tests.append(ConformanceTest(path.stem, g.get("name") or "", t.get("name") or "",
                                         (e.text or "").strip(), outputs, invalid))
    return tests


def load_suite(directory: Path) -> dict[str, list[ConformanceTest]]:
    return {p.stem: load_group(p) for p in sorted((directory / "cql").glob("*.xml"))}


# -- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    test: ConformanceTest
    passed: bool
    cause: str | None = None  # translator | engine | harness when failed
    detail: str = ""

    @property
    def id(self) -> str:
        return self.test.id


@dataclass
class GroupResult:
    group: str
    outcomes: list[Outcome]
    seconds: float = 0.0

    @property
    def passed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.passed]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]


@dataclass(frozen=True)
class KnownFailure:
    id: str
    cause: str
    note: str = ""


def read_known_failures(path: Path = KNOWN_FAILURES_FILE) -> dict[str, KnownFailure]:
    out: dict[str, KnownFailure] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line, _, note = raw.partition("#")
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in CAUSES:
            raise ValueError(f"{path}:{n}: expected 'Group.Test  cause  # note' with cause in {CAUSES}: {raw!r}")
        out[parts[0]] = KnownFailure(parts[0], parts[1], note.strip())
    return out


def format_known_failures(failures: Iterable[KnownFailure], engine: str = "reference") -> str:
    rows = sorted(failures, key=lambda f: f.id)
    width = max((len(f.id) for f in rows), default=0)
    header = (f"# CQL conformance tests (tests/conformance/cql-tests) that fail today on the {engine} engine, with a\n"
              "# one-word cause: translator | engine | harness. tests/conformance/test_conformance.py fails when any\n"
              "# other test fails. Regenerate with: python -m tests.conformance.harness --write-known-failures\n")
    body = "".join(f"{f.id:<{width}}  {f.cause:<10}" + (f"  # {f.note}" if f.note else "") + "\n" for f in rows)
    return header + body


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- building libraries -----------------------------------------------------------------------


# Expected outputs that are not valid CQL in the suite, with the evident intent written out.
# Each entry is a correction of the suite's text, not of the engine's answer; keep it short.
OUTPUT_FIXES: dict[str, tuple[str, ...]] = {
    # `codes` is a List<Code>: the suite writes a single Code, which the translator rejects.
    "CqlTypeOperatorsTest.CodeToConcept1": ("Concept { codes: { Code { code: '8480-6' } } }",),
}


def expected_outputs(test: ConformanceTest) -> list[str]:
    """The CQL text of each expected output (typed outputs as CQL literals, fixes applied)."""
    if test.id in OUTPUT_FIXES:
        return list(OUTPUT_FIXES[test.id])
    return [_output_cql(text, type_) for text, type_ in test.outputs]


def _output_cql(text: str, type_: str | None) -> str:
    if type_ == "string" and not text.startswith("'"):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text


@dataclass
class _Library:
    name: str
    cql: str
    lines: list[tuple[int, int, str]]  # (first, last, define name)

    def define_at(self, line: int) -> str | None:
        for first, last, name in self.lines:
            if first <= line <= last:
                return name
        return None


def _defines(index: int, test: ConformanceTest, outputs: bool = True) -> list[tuple[str, str]]:
    out = [(f"t{index:04d}_expr", test.expression)]
    if outputs and test.invalid is None:
        for k, text in enumerate(expected_outputs(test)):
            out.append((f"t{index:04d}_out{k}", text))
    return out


def build_library(name: str, defines: Sequence[tuple[str, str]]) -> _Library:
    parts = [f"library {name} version '1.0.0'", ""]
    line = len(parts) + 1
    spans = []
    for dname, body in defines:
        text = f'define "{dname}":\n' + "\n".join("  " + ln for ln in body.splitlines()) + "\n"
        n = text.count("\n")
        spans.append((line, line + n - 1, dname))
        parts.append(text)
        line += n + 1  # a blank line between defines
    return _Library(name, "\n".join(parts) + "\n", spans)


# -- types and values ---------------------------------------------------------------------------


def _type_of(node: Mapping[str, Any] | None) -> Any:
    """A translator result type as a small structure: "Integer", ("List", t), ("Interval", t),
    ("Tuple", {name: t}), ("Choice", (t, ...)), or None for Any / unknown."""
    if not node:
        return None
    name = node.get("resultTypeName") or node.get("name")
    spec = node.get("resultTypeSpecifier")
    if spec is None and node.get("type", "").endswith("TypeSpecifier"):
        spec = node
    if name and (spec is None or spec.get("type") == "NamedTypeSpecifier"):
        name = spec.get("name", name) if spec else name
        simple = name[len(ELM_TYPES):] if name.startswith(ELM_TYPES) else name
        return None if simple == "Any" else simple
    if spec is None:
        return None
    kind = spec.get("type")
    if kind == "NamedTypeSpecifier":
        return _type_of({"resultTypeName": spec.get("name")})
    if kind == "ListTypeSpecifier":
        return ("List", _type_of(spec.get("elementType")))
    if kind == "IntervalTypeSpecifier":
        return ("Interval", _type_of(spec.get("pointType")))
    if kind == "TupleTypeSpecifier":
        return ("Tuple", {e["name"]: _type_of(e.get("elementType") or e.get("type")) for e in spec.get("element") or []})
    if kind == "ChoiceTypeSpecifier":
        return ("Choice", tuple(_type_of(c) for c in spec.get("choice") or spec.get("type") or []))
    return None


NUMERIC = ("Integer", "Long", "Decimal")


@dataclass(frozen=True)
class Num:
    """A number with the CQL type it has (None when the static type does not say)."""

    kind: str | None
    value: Decimal

    def __str__(self) -> str:
        if self.kind == "Long":
            return f"{self.value}L"
        if self.kind == "Decimal" and self.value == self.value.to_integral_value() and "E" not in str(self.value):
            return f"{self.value}.0" if "." not in str(self.value) else str(self.value)
        return str(self.value)


@dataclass(frozen=True)
class Wrong:
    """A value of the wrong runtime shape for its static type (never equal to anything)."""

    expected_type: str
    value: Any

    def __str__(self) -> str:
        return f"<{self.expected_type} left as {type(self.value).__name__} {self.value!r}>"


def typed(value: Any, type_: Any) -> Any:
    """Decoded engine value -> the same, with numbers as `Num` typed by the static type."""
    if value is None:
        return None
    if isinstance(type_, tuple) and type_[0] == "Choice":
        type_ = None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, Decimal)):
        kind = type_ if type_ in NUMERIC else None
        num = Decimal(value)
        if kind in ("Integer", "Long") and num != num.to_integral_value():
            kind = "Decimal"  # a fractional value under an Integer type: show it as what it is
        return Num(kind, num)
    if isinstance(value, str):
        return Wrong(type_, value) if type_ in NUMERIC else value
    if isinstance(value, list):
        elem = type_[1] if isinstance(type_, tuple) and type_[0] == "List" else None
        return [typed(v, elem) for v in value]
    if isinstance(value, Interval):
        point = type_[1] if isinstance(type_, tuple) and type_[0] == "Interval" else None
        return Interval(typed(value.low, point), typed(value.high, point), value.low_closed, value.high_closed)
    if isinstance(value, Quantity):
        return value
    if isinstance(value, Uncertainty):  # a range of values of the static type (e.g. Integer)
        return Uncertainty(typed(value.low, type_), typed(value.high, type_))
    if isinstance(value, dict):
        elems = type_[1] if isinstance(type_, tuple) and type_[0] == "Tuple" else {}
        return {k: typed(v, elems.get(k)) for k, v in value.items()}
    if is_dataclass(value):
        return type(value)(**{f.name: typed(getattr(value, f.name), None) for f in fields(value)})
    return value


_DT = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{3}))?)?)?)?)?)?"
                 r"(Z|[+-]\d{2}:\d{2})?$")
_TM = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d{3}))?)?)?$")


def _step_datetime(text: str, delta: int, time_only: bool = False) -> str | None:
    """`text` moved by one unit of its own precision (successor / predecessor), or None."""
    m = (_TM if time_only else _DT).match(text)
    if not m:
        return None
    if time_only:
        parts = [2000, 1, 1, *m.groups()]
        suffix = ""
    else:
        parts = list(m.groups()[:7])
        suffix = m.group(8) or ""
    known = [p for p in parts if p is not None]
    precision = len(known)  # 1 year .. 7 millisecond
    y, mo, d, h, mi, sec, ms = [int(p) if p is not None else 0 for p in parts] + [0] * (7 - len(parts))
    mo, d = mo or 1, d or 1
    if precision == 1:
        y += delta
        out = datetime(y, 1, 1) if 1 <= y <= 9999 else None
    elif precision == 2:
        total = y * 12 + (mo - 1) + delta
        y, mo = divmod(total, 12)
        out = datetime(y, mo + 1, 1) if 1 <= y <= 9999 else None
    else:
        unit = [None, None, None, timedelta(days=1), timedelta(hours=1), timedelta(minutes=1),
                timedelta(seconds=1), timedelta(milliseconds=1)][precision]
        try:
            out = datetime(y, mo, d, h, mi, sec, ms * 1000) + delta * unit
        except (ValueError, OverflowError):
            out = None
    if out is None or (time_only and out.date() != datetime(2000, 1, 1).date()):
        return None
    fields_ = [f"{out.year:04d}", f"-{out.month:02d}", f"-{out.day:02d}", f"T{out.hour:02d}", f":{out.minute:02d}",
               f":{out.second:02d}", f".{out.microsecond // 1000:03d}"]
    if time_only:
        return "".join(fields_[3:precision])[1:]
    return "".join(fields_[:precision]) + suffix


_DECIMAL_STEP = Decimal("1E-8")


def _step(point: Any, delta: int) -> Any:
    """successor (delta=1) / predecessor (-1) of a point, or None when it cannot be told."""
    if isinstance(point, Num):
        if point.kind in ("Integer", "Long"):
            return Num(point.kind, point.value + delta)
        if point.kind == "Decimal":
            return Num("Decimal", point.value + delta * _DECIMAL_STEP)
        return None
    if isinstance(point, Quantity) and point.value is not None:
        return Quantity(point.value + delta * _DECIMAL_STEP, point.unit)
    if isinstance(point, (CqlDateTime, CqlDate, CqlTime)):
        text = _step_datetime(point.text, delta, time_only=isinstance(point, CqlTime))
        return type(point)(text) if text is not None else None
    return None


def closed_form(iv: Interval) -> Interval:
    """An interval over a discrete point type with open bounds made closed, as CQL's equality
    sees them (Interval[1, 5) = Interval[1, 4]); bounds it cannot step stay as they are."""
    low, high, lc, hc = iv.low, iv.high, iv.low_closed, iv.high_closed
    if not lc and low is not None:
        s = _step(low, 1)
        if s is not None:
            low, lc = s, True
    if not hc and high is not None:
        p = _step(high, -1)
        if p is not None:
            high, hc = p, True
    return Interval(low, high, lc, hc)


# Implicit conversions CQL applies to the expected output's literal when it stands where the
# expression's type is expected (`10` where a Decimal is due, `@2012-01-01` for a DateTime).
_NUM_CONVERSIONS = {("Integer", "Decimal"), ("Integer", "Long")}


def matches(actual: Any, expected: Any) -> bool:
    """Does the engine's typed value equal the expected one? Strict (see the module docstring):
    no tolerance on numbers, Integer never for Decimal, ordered lists, null only for null. The
    expected side may undergo CQL's implicit conversions (Integer -> Decimal/Long, Date ->
    DateTime), since the suite writes e.g. `{ Interval[10, 10] }` for a Decimal result."""
    a, e = actual, expected
    if a is None or e is None:
        return a is None and e is None
    if isinstance(a, Interval) and isinstance(e, Interval):
        a, e = closed_form(a), closed_form(e)
        return (a.low_closed == e.low_closed and a.high_closed == e.high_closed
                and matches(a.low, e.low) and matches(a.high, e.high))
    if isinstance(a, Uncertainty) and isinstance(e, Interval):
        # cql-execution's uncertainty (e.g. `years between` imprecise DateTimes) has no CQL
        # literal; the suite writes it as the closed Interval of its bounds.
        return e.low_closed and e.high_closed and matches(a.low, e.low) and matches(a.high, e.high)
    if isinstance(a, Wrong) or isinstance(e, Wrong):
        return False
    if isinstance(a, bool) or isinstance(e, bool):
        return isinstance(a, bool) and isinstance(e, bool) and a == e
    if isinstance(a, Num) or isinstance(e, Num):
        if not (isinstance(a, Num) and isinstance(e, Num)) or a.value != e.value:
            return False
        return (a.kind == e.kind or a.kind is None or e.kind is None or (e.kind, a.kind) in _NUM_CONVERSIONS)
    if isinstance(a, Decimal) or isinstance(e, Decimal):  # inside Quantity etc.
        return (isinstance(a, (Decimal, int)) and isinstance(e, (Decimal, int))
                and Decimal(a) == Decimal(e))
    if isinstance(a, str) or isinstance(e, str):
        return isinstance(a, str) and isinstance(e, str) and a == e
    if isinstance(a, list) or isinstance(e, list):
        return (isinstance(a, list) and isinstance(e, list) and len(a) == len(e)
                and all(map(matches, a, e)))
    if isinstance(a, dict) or isinstance(e, dict):
        return (isinstance(a, dict) and isinstance(e, dict) and a.keys() == e.keys()
                and all(matches(a[k], e[k]) for k in a))
    if isinstance(a, CqlDateTime) and isinstance(e, CqlDate):
        return "T" not in a.text and a.text == e.text  # Date -> DateTime keeps the date's precision
    if type(a) is not type(e):
        return False
    if is_dataclass(a):
        return all(matches(getattr(a, f.name), getattr(e, f.name)) for f in fields(a))
    return a == e


def show(value: Any) -> str:
    """A compact CQL-like rendering, for failure notes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "{" + ", ".join(show(v) for v in value) + "}"
    if isinstance(value, dict):
        return "Tuple{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Interval):
        return ("Interval[" if value.low_closed else "Interval(") + f"{show(value.low)}, {show(value.high)}" + (
            "]" if value.high_closed else ")")
    if isinstance(value, Uncertainty):
        return f"Uncertainty[{show(value.low)}, {show(value.high)}]"
    if isinstance(value, Quantity):
        return f"{value.value} '{value.unit}'"
    if isinstance(value, CqlDateTime):
        return "@" + value.text + ("" if "T" in value.text else "T")
    if isinstance(value, CqlDate):
        return "Date @" + value.text
    if isinstance(value, CqlTime):
        return "@T" + value.text
    return str(value)


_INT = re.compile(r"^[+-]?\d+$")
_DEC = re.compile(r"^[+-]?\d+\.\d+$")
_STR = re.compile(r"^'((?:[^'\\]|\\.)*)'$", re.S)
_QTY = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*'([^'\\]*)'$")
_LONG = re.compile(r"^[+-]?\d+L$")
_DT_LIT = re.compile(r"^@(\d{4}(?:-\d{2}(?:-\d{2})?)?)(T(?:\d{2}(?::\d{2}(?::\d{2}(?:\.\d{3})?)?)?)?)?(Z|[+-]\d{2}:\d{2})?$")
_TIME_LIT = re.compile(r"^@T(\d{2}(?::\d{2}(?::\d{2}(?:\.\d{3})?)?)?)$")
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def literal_value(text: str) -> tuple[bool, Any]:
    """(True, typed value) for a simple scalar CQL literal, else (False, None)."""
    t = text.strip()
    if t == "null":
        return True, None
    if t in ("true", "false"):
        return True, t == "true"
    if _INT.match(t):
        return True, Num("Integer", Decimal(t))
    if _DEC.match(t):
        return True, Num("Decimal", Decimal(t))
    m = _STR.match(t)
    if m:
        def unescape(mm: re.Match[str]) -> str:
            c = mm.group(1)
            if c.startswith("u"):
                return chr(int(c[1:], 16))
            return _ESCAPES.get(c, c)
        return True, re.sub(r"\\(u[0-9A-Fa-f]{4}|.)", unescape, m.group(1))
    m = _QTY.match(t)
    if m:
        return True, Quantity(Decimal(m.group(1)), m.group(2))
    if _LONG.match(t):
        return True, Num("Long", Decimal(t[:-1]))
    m = _TIME_LIT.match(t)
    if m:
        return True, CqlTime(m.group(1))
    m = _DT_LIT.match(t)
    if m:
        date, time_, offset = m.groups()
        if time_ is None:
            return (True, CqlDate(date)) if offset is None else (False, None)
        if time_ == "T":  # a DateTime of date precision: its text carries no offset
            return (True, CqlDateTime(date)) if offset is None else (False, None)
        # No offset: the evaluation's (EXECUTION_DATETIME is UTC); Z is +00:00.
        return True, CqlDateTime(date + time_ + ("+00:00" if offset in (None, "Z") else offset))
    return False, None


# -- running ------------------------------------------------------------------------------------


# The project's translator leaves result types out of the ELM (they cost size and the engine
# needs none). The comparison needs them (JSON cannot tell 1 from 1.0), so a second translator
# process with result types on types each library. Its ELM is only read for types; what runs is
# always the project translator's ELM.


class TypingUnavailable(EngineUnavailable):
    """The translator could not be made to annotate result types."""


class TypingTranslator:
    """Result types of every define of a CQL library, from the translator (see above)."""

    def __init__(self) -> None:
        self._translator = Translator(result_types=True)

    def types(self, cql: str) -> dict[str, Any]:
        t = self._translator.translate(cql)
        if t.elm is None:
            raise RuntimeError("the typing translator failed: " + "; ".join(m.message for m in t.errors))
        nodes = {d["name"]: d.get("expression") or {} for d in (t.elm["library"].get("statements") or {}).get("def") or []}
        untyped = [n for n, node in nodes.items()
                   if not node.get("resultTypeName") and not node.get("resultTypeSpecifier")]
        if untyped:  # result types did not take: never compare without types
            raise TypingUnavailable(f"the translator gave no result type for {', '.join(untyped[:3])}")
        return {name: _type_of({"resultTypeName": node.get("resultTypeName"),
                                "resultTypeSpecifier": node.get("resultTypeSpecifier")})
                for name, node in nodes.items()}

    def close(self) -> None:
        self._translator.close()


class _Failed(Exception):
    """A define could not be evaluated: `timeout` tells an engine hang from a runtime error."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class ConformanceRunner:
    """Runs groups of conformance tests with one translator process and one CQL worker, on each
    of `engines` (the worker holds both; each evaluate request names its engine)."""

    def __init__(self, translator: Translator | None = None, pool: WorkerPool | None = None,
                 *, timeout: float = 20.0, execution_datetime: str = EXECUTION_DATETIME,
                 engines: Sequence[str] = ENGINES) -> None:
        self._own_translator = translator is None
        self._own_pool = pool is None
        self.engines = tuple(engines)
        self.translator = translator or Translator()
        # One worker, loaded by us: the pool's own library set stays empty (its warm-up would
        # evaluate every library, and a conformance library is allowed to throw). Loaded for the
        # compiled engine (it then holds the reference engine as well) when that one runs.
        self.pool = pool or WorkerPool({}, size=1, timeout=timeout,
                                       engine="compiled" if "compiled" in self.engines else "reference")
        self.timeout = timeout
        self.at = execution_datetime
        self._loaded: tuple[frozenset[str], tuple[int, ...]] | None = None
        self.typing: TypingTranslator | None = None
        try:
            self.typing = TypingTranslator()
            self.pool.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.typing is not None:
            self.typing.close()
        if self._own_pool:
            self.pool.close()
        if self._own_translator:
            self.translator.close()

    def __enter__(self) -> ConformanceRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- translation ------------------------------------------------------------------------

    def _translate(self, lib: _Library) -> Translation:
        return self.translator.translate(lib.cql)

    def _translate_group(self, group: str, tests: Sequence[tuple[int, ConformanceTest]]
                         ) -> tuple[dict[str, Any] | None, str, dict[int, list[str]]]:
        """Translate a group library, dropping the defines whose lines carry errors.

        Returns the ELM of what translated and, per dropped test, the messages that dropped it."""
        keep = dict(tests)
        dropped: dict[int, list[str]] = {}
        while keep:
            defs = [d for i, t in keep.items() for d in _defines(i, t)]
            lib = build_library(f"Conformance_{group}", defs)
            tr = self._translate(lib)
            if tr.ok:
                return tr.elm, lib.cql, dropped
            bad: dict[int, list[str]] = {}
            for m in tr.errors:
                name = lib.define_at(m.line) if m.line is not None else None
                if name is None:
                    continue
                bad.setdefault(int(name[1:5]), []).append(m.message)
            if not bad:  # errors with no place: leave every test to be translated alone
                for i in keep:
                    dropped[i] = ["the group library did not translate: " + "; ".join(e.message for e in tr.errors)]
                return None, "", dropped
            for i, msgs in bad.items():
                keep.pop(i, None)
                dropped[i] = msgs
        return None, "", dropped

    def _translate_dropped(self, group: str, tests: Sequence[ConformanceTest], dropped: Mapping[int, list[str]]
                           ) -> tuple[dict[int, Outcome], dict[int, tuple[dict[str, Any], str]]]:
        """Tests that left the group library, translated alone (expression, then with outputs):
        their outcomes when that settles them, else their own ELM and CQL to run."""
        outcomes: dict[int, Outcome] = {}
        solo: dict[int, tuple[dict[str, Any], str]] = {}
        for i, msgs in dropped.items():
            t = tests[i - 1]
            tr = self._translate(build_library(f"Conformance_{group}_{i}", _defines(i, t, outputs=False)))
            if not tr.ok:
                msg = "; ".join(e.message for e in tr.errors) or "; ".join(msgs)
                if t.invalid in ("true", "syntax", "semantic"):
                    outcomes[i] = Outcome(t, True, detail="translation error: " + _short(msg))
                elif t.invalid == "execution":
                    outcomes[i] = Outcome(t, False, "translator",
                                          "expected a runtime error, got a translation error: " + _short(msg))
                else:
                    outcomes[i] = Outcome(t, False, "translator", _short(msg))
                continue
            lib = build_library(f"Conformance_{group}_{i}", _defines(i, t))
            tr = self._translate(lib)
            if not tr.ok:
                outcomes[i] = Outcome(t, False, "harness", "expected output does not translate: "
                                      + _short("; ".join(e.message for e in tr.errors)))
                continue
            assert tr.elm is not None
            solo[i] = (tr.elm, lib.cql)
        return outcomes, solo

    # -- execution --------------------------------------------------------------------------

    def _evaluate(self, libraries: Mapping[str, dict[str, Any]], name: str, engine: str) -> dict[str, Any]:
        key = (frozenset(libraries), tuple(self.pool.pids))
        if self._loaded != key:
            self.pool.request({"op": "load", "libraries": dict(libraries), "engine": self.pool.engine},
                              timeout=self.timeout * 3)
            self._loaded = (frozenset(libraries), tuple(self.pool.pids))
        try:
            # The compiled engine alone: an unsupported construct or a Divergence is its failure.
            reply = self.pool.request({"op": "evaluate", "libraries": [name], "bundle": None,
                                       "executionDateTime": self.at, "engine": engine,
                                       **({"fallback": False} if engine == "compiled" else {})},
                                      timeout=self.timeout)
            return reply["results"][name]
        except EngineTimeout as exc:
            self._loaded = None
            raise _Failed(str(exc), timeout=True) from None
        except EngineError as exc:
            if not self.pool.pids or tuple(self.pool.pids) != self._loaded[1]:
                self._loaded = None
            raise _Failed(str(exc)) from None

    @staticmethod
    def _cut(elm: dict[str, Any], lib_name: str, defs: list[dict[str, Any]]) -> dict[str, Any]:
        """The library with only `defs` (the suite's defines never refer to one another)."""
        lib = elm["library"]
        return {**elm, "library": {**lib, "identifier": {**lib["identifier"], "id": lib_name},
                                   "statements": {**lib["statements"], "def": defs}}}

    def _evaluate_all(self, elm: dict[str, Any], isolate: Iterable[str] = (), engine: str = "reference"
                      ) -> dict[str, Any | _Failed]:
        """Every define's raw value, or the `_Failed` it raised.

        cql-execution abandons a whole library at the first runtime error, so the defines in
        `isolate` (those expected to fail) run one per request, the rest in one request, and
        when that one fails, every define runs on its own."""
        name = elm["library"]["identifier"]["id"]
        defs = elm["library"]["statements"]["def"]
        isolated = set(isolate)
        batch = [d for d in defs if d["name"] not in isolated]
        alone = [d for d in defs if d["name"] in isolated]

        def libraries_for(ds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            singles = {f"{name}__{d['name']}": self._cut(elm, f"{name}__{d['name']}", [d]) for d in ds}
            return {name: self._cut(elm, name, batch), **singles}

        libraries = libraries_for(alone)
        results: dict[str, Any | _Failed] = {}
        if batch:
            try:
                results.update(self._evaluate(libraries, name, engine))
            except _Failed:
                alone = defs
                libraries = libraries_for(alone)
        for d in alone:
            try:
                results[d["name"]] = self._evaluate(libraries, f"{name}__{d['name']}", engine)[d["name"]]
            except _Failed as exc:
                results[d["name"]] = exc
        return results

    def _try_types(self, cql: str) -> dict[str, Any] | None:
        try:
            return self._types_of(cql)
        except TypingUnavailable:
            raise
        except RuntimeError:  # the first attempt did not translate: type the final text later
            return None

    def _types_of(self, cql: str) -> dict[str, Any]:
        assert self.typing is not None
        return self.typing.types(cql)

    def _types(self, elm: dict[str, Any], cql: str, ready: Future[dict[str, Any] | None] | None = None
               ) -> dict[str, Any]:
        """Each define's static result type: from the ELM when it carries them, else typed apart
        (`ready`: the same text typed already)."""
        defs = elm["library"]["statements"]["def"]
        if all("resultTypeName" in d["expression"] or "resultTypeSpecifier" in d["expression"] for d in defs):
            return {d["name"]: _type_of(d["expression"]) for d in defs}
        done = ready.result() if ready is not None else None
        return done if done is not None else self._types_of(cql)

    # -- one group --------------------------------------------------------------------------

    def run_group(self, group: str, tests: Sequence[ConformanceTest]) -> dict[str, GroupResult]:
        """The group's outcomes on each engine (translated and typed once)."""
        start = time.monotonic()
        indexed = list(enumerate(tests, 1))
        with ThreadPoolExecutor(1) as typing:  # typing runs beside translation and evaluation
            # Most group libraries translate at the first attempt: type that text meanwhile.
            first = build_library(f"Conformance_{group}", [d for i, t in indexed for d in _defines(i, t)])
            first_types = typing.submit(self._try_types, first.cql)
            elm, elm_cql, dropped = self._translate_group(group, indexed)
            settled, solo = self._translate_dropped(group, tests, dropped)
            values: dict[str, dict[str, Any]] = {e: {} for e in self.engines}
            types: dict[str, Any] = {}
            pending = []
            isolate = {f"t{i:04d}_expr" for i, t in indexed if t.invalid is not None}
            if elm is not None:
                pending.append(typing.submit(self._types, elm, elm_cql, first_types if elm_cql == first.cql else None))
                for e in self.engines:
                    values[e].update(self._evaluate_all(elm, isolate, e))
            for sub, sub_cql in solo.values():
                pending.append(typing.submit(self._types, sub, sub_cql))
                for e in self.engines:
                    values[e].update(self._evaluate_all(sub, isolate, e))
            for p in pending:
                types.update(p.result() or {})
        seconds = time.monotonic() - start
        results = {}
        for e in self.engines:
            outcomes = dict(settled)
            for i, t in indexed:
                if i not in outcomes:
                    outcomes[i] = self._judge(i, t, values[e], types)
            results[e] = GroupResult(group, [outcomes[i] for i, _ in indexed], seconds)
        return results

    def _judge(self, i: int, t: ConformanceTest, values: Mapping[str, Any], types: Mapping[str, Any]) -> Outcome:
        if f"t{i:04d}_expr" not in values:  # never an error that could pass an `invalid` test
            return Outcome(t, False, "harness", "the expression was not evaluated")
        expr = values[f"t{i:04d}_expr"]
        if t.invalid is not None:
            if t.invalid in ("syntax", "semantic"):
                return Outcome(t, False, "translator", f"expected a {t.invalid} error, but it translated")
            if isinstance(expr, _Failed) and not expr.timeout:
                return Outcome(t, True, detail="runtime error: " + _short(str(expr)))
            if isinstance(expr, _Failed):
                return Outcome(t, False, "engine", "expected an error, timed out")
            return Outcome(t, False, "engine", "expected an error, got " + _short(show(typed(decode(expr), types.get(f"t{i:04d}_expr")))))
        if isinstance(expr, _Failed):
            return Outcome(t, False, "engine", ("timeout: " if expr.timeout else "runtime error: ") + _short(str(expr)))
        if not t.outputs:
            return Outcome(t, False, "harness", "the test has neither an output nor `invalid`")
        actual = typed(decode(expr), types.get(f"t{i:04d}_expr"))
        expected_parts = []
        for k, text in enumerate(expected_outputs(t)):
            out = values.get(f"t{i:04d}_out{k}", _Failed("not evaluated"))
            if isinstance(out, _Failed):
                return Outcome(t, False, "harness", "expected output does not evaluate: " + _short(str(out)))
            value = typed(decode(out), types.get(f"t{i:04d}_out{k}"))
            simple, parsed = literal_value(text)
            if value is None and text.strip() != "null":
                return Outcome(t, False, "engine", f"the expected output {_short(text, 40)} evaluates to null")
            if simple and not matches(value, parsed):
                return Outcome(t, False, "engine", f"the engine reads the literal {_short(text, 40)} as {_short(show(value), 40)}")
            expected_parts.append(value)
        expected = expected_parts[0] if len(expected_parts) == 1 else expected_parts
        if matches(actual, expected):
            return Outcome(t, True)
        return Outcome(t, False, "engine", f"expected {_short(show(expected), 50)}, got {_short(show(actual), 50)}")


# -- command line ----------------------------------------------------------------------------


def run_suite(groups: Sequence[str] | None = None, directory: Path | None = None,
              engines: Sequence[str] = ENGINES) -> dict[str, list[GroupResult]]:
    directory = directory or suite_dir()
    if directory is None:
        raise SystemExit(f"the CQL conformance suite is absent (set {ENV_VAR}; the vendored copy is {VENDORED_SUITE})")
    suite = load_suite(directory)
    results: dict[str, list[GroupResult]] = {e: [] for e in engines}
    with ConformanceRunner(engines=engines) as runner:
        for g, tests in suite.items():
            if groups and g not in groups:
                continue
            for e, r in runner.run_group(g, tests).items():
                results[e].append(r)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.conformance.harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="*", help="groups (XML file stems) to run; default all")
    ap.add_argument("--engine", choices=ENGINES, action="append",
                    help="run only this engine (repeatable; default both)")
    ap.add_argument("--write-known-failures", action="store_true",
                    help="rewrite each engine's known-failure list (tests/conformance/known_failures*.txt) "
                         "with today's failures")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every failure")
    args = ap.parse_args(argv)
    engines = tuple(args.engine or ENGINES)
    by_engine = run_suite(args.groups or None, engines=engines)
    for engine, results in by_engine.items():
        path = KNOWN_FAILURES_FILES[engine]
        known = read_known_failures(path)
        total = passed = 0
        print(f"-- {engine} engine")
        for r in results:
            total += len(r.outcomes)
            passed += len(r.passed)
            print(f"{r.group}: {len(r.passed)} passed, {len(r.failed)} failed "
                  f"({sum(o.id in known for o in r.failed)} known) in {r.seconds:.1f} s")
            if args.verbose:
                for o in r.failed:
                    print(f"    {o.id}  {o.cause}  {o.detail}")
        print(f"total ({engine}): {passed} passed, {total - passed} failed, of {total}")
        if args.write_known_failures:
            ran = {o.id for r in results for o in r.outcomes}
            keep = [k for k in known.values() if k.id not in ran]  # groups not run stay as they were
            # A test that still fails keeps its line as it was (causes and notes may be curated);
            # the compiled engine's list reuses the reference's line for the same failure.
            curated = read_known_failures(KNOWN_FAILURES_FILE)
            now = [known.get(o.id) or curated.get(o.id) or KnownFailure(o.id, o.cause or "engine", o.detail)
                   for r in results for o in r.failed]
            path.write_text(format_known_failures(keep + now, engine), encoding="utf-8")
            print(f"wrote {len(keep) + len(now)} known failures to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
