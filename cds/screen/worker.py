"""Executor side: each patient's lines -> record -> population gate -> every trial's rules.

Runs inside Spark's Python workers. Each Python worker process starts one CQL engine (a pool of
Node workers, `cds.engine.Engine`) the first time it gets a partition and keeps it for every
later task (Spark reuses its Python workers), so the libraries are loaded once per worker, not
once per task. The evaluation is the service's own: the catalogue's population library first
("In Catalogue Population"), then `cds.eligibility.evaluate_trials`, the call behind
`trial-cds evaluate`. Nothing here decides a criterion.

A patient whose record cannot be assembled without guessing (no Patient resource, two
different versions of one resource, a line Python cannot read) is not screened: it comes out
as a problem row naming the patient and the reason.
"""

from __future__ import annotations

import atexit
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalogue import Catalogue
from ..eligibility import CriterionResult, TrialResult, evaluate_trials
from ..engine import Engine, EngineError, EngineUnavailable
from ..ruleset import SCREEN_DEFINE, screen_library
from .bulk import PROBLEM, split_problem

POPULATION_DEFINE = SCREEN_DEFINE

# Problems found while assembling one patient's record.
NO_PATIENT_RESOURCE = "no-patient-resource"
CONFLICTING_VERSIONS = "conflicting-versions"
UNREADABLE = "unreadable-resource"
EVALUATION_FAILED = "evaluation-failed"
DUPLICATES = "duplicate-lines"
# Resources whose code is in no code system the rules name (or that have no coding): no rule can
# classify them. Counted by type and systems; and patients outside the population who have one,
# since such a record may hold the diagnosis the gate looks for in a coding it cannot read.
UNREADABLE_CODES = "codes-no-rule-reads"
OUTSIDE_WITH_UNREADABLE = "outside-population-with-unreadable-codes"

KIND_RESULT, KIND_PATIENT, KIND_PROBLEM = "result", "patient", "problem"
OUT_FIELDS = ("kind", "patient_id", "trial", "trial_order", "in_population", "verdict", "criteria", "excluded_by",
              "undecided", "to_confirm", "missing_tests", "oldest_evidence", "newest_evidence", "problem", "detail",
              "count", "resources", "gate_ms", "trials_ms", "deceased")


def population_library(catalogue: Catalogue) -> str | None:
    """The library defining "In Catalogue Population" (the catalogue's gate), as the service finds it."""
    return screen_library(catalogue)


@dataclass(frozen=True)
class ScreenTask:
    """What every executor needs, shipped once (Spark broadcast)."""

    catalogue: Catalogue
    trials: tuple[str, ...]
    at: str
    gate: str | None
    pool_size: int = 1
    timeout: float = 30.0
    key: str = field(default="")
    # The code to order for each test (the first of each ELM code list), as the cards suggest.
    orderable: frozenset[tuple[str, str]] = frozenset()
    # Code systems the rules name, and where each resource type keeps its code (model info).
    known_systems: frozenset[str] = frozenset()
    code_paths: tuple[tuple[str, str], ...] = ()


# -- one engine per Python worker process ----------------------------------------------------

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(task: ScreenTask) -> Engine:
    """This process's engine for the task's catalogue, started on first use."""
    key = f"{task.key}:{task.pool_size}:{task.timeout}"
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            # Built as the service builds it (cds.ruleset.build_ruleset): the catalogue's own value sets.
            engine = Engine(task.catalogue.libraries, pool_size=task.pool_size, timeout=task.timeout,
                            value_sets=task.catalogue.value_sets).start()
            _engines[key] = engine
        return engine


@atexit.register
def _close_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.close()
        _engines.clear()


# -- records -----------------------------------------------------------------------------

class RecordProblem(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def _sort_key(res: Mapping[str, Any], line: str) -> tuple[int, str, str, str]:
    rtype = str(res.get("resourceType"))
    return (0 if rtype == "Patient" else 1, rtype, str(res.get("id", "")), line)


def assemble(patient_id: str, lines: Iterable[str]) -> tuple[dict[str, Any], int]:
    """A collection Bundle of the patient's resources (Patient first, then by type and id) and the
    number of duplicate lines dropped. Raises RecordProblem when the record would need a guess."""
    parsed: list[tuple[tuple[int, str, str, str], dict[str, Any]]] = []
    for line in lines:
        try:
            res = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise RecordProblem(UNREADABLE, f"a line could not be read ({exc.__class__.__name__})") from None
        if not isinstance(res, dict):
            raise RecordProblem(UNREADABLE, "a line is not a JSON object")
        parsed.append((_sort_key(res, line), res))
    parsed.sort(key=lambda item: item[0])
    kept: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    duplicates = 0
    for (_, rtype, rid, line), res in parsed:
        if rid:
            previous = seen.get((rtype, rid))
            if previous is not None:
                if previous == line or res == json.loads(previous):
                    duplicates += 1
                    continue
                raise RecordProblem(CONFLICTING_VERSIONS, f"{rtype}/{rid} appears with different content")
            seen[(rtype, rid)] = line
        kept.append(res)
    patients = [r for r in kept if r.get("resourceType") == "Patient"]
    if not patients:
        raise RecordProblem(NO_PATIENT_RESOURCE, f"{len(kept)} resource(s) name Patient/{patient_id}, "
                                                 "which the export does not hold")
    if len(patients) > 1:  # pragma: no cover - two Patients with one id are caught as conflicting versions
        raise RecordProblem(CONFLICTING_VERSIONS, f"Patient/{patient_id} appears more than once")
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in kept]}, duplicates


# -- results -> rows ----------------------------------------------------------------------

def _deciding(c: CriterionResult) -> bool:
    return (c.type == "inclusion" and c.status == "not-met") or (c.type == "exclusion" and c.status == "met")


def _criterion_row(c: CriterionResult) -> tuple[Any, ...]:
    evidence = [(e.reference, None if e.value is None else str(e.value), e.unit, e.date, e.note) for e in c.evidence]
    missing = [(m.system, m.code, m.display) for m in c.missing]
    return (c.id, c.type, c.status, evidence, missing)


def row(kind: str, **fields: Any) -> tuple[Any, ...]:
    """One row of the output table (OUT_FIELDS order; absent fields are null)."""
    unknown = set(fields) - set(OUT_FIELDS)
    if unknown:  # pragma: no cover - a programming error
        raise KeyError(f"not output fields: {sorted(unknown)}")
    return tuple(kind if name == "kind" else fields.get(name) for name in OUT_FIELDS)


def result_row(patient_id: str, order: int, result: TrialResult,
               orderable: frozenset[tuple[str, str]] = frozenset(), deceased: bool = False) -> tuple[Any, ...]:
    """The tests to order are those of undecided criteria, one code per test (the orderable one)."""
    criteria = result.criteria
    missing: list[tuple[str | None, str, str | None]] = []
    for c in criteria:
        if c.status != "unknown" or c.type == "review":
            continue
        for m in c.missing:
            item = (m.system, m.code, m.display)
            if item not in missing and (not orderable or (m.system or "", m.code) in orderable):
                missing.append(item)
    dates = sorted(e.date for c in criteria for e in c.evidence if e.date)
    return row(KIND_RESULT, patient_id=patient_id, trial=result.researchStudy, trial_order=order, in_population=True,
               verdict=result.verdict, criteria=[_criterion_row(c) for c in criteria],
               excluded_by=[c.id for c in criteria if _deciding(c)],
               undecided=[c.id for c in criteria if c.status == "unknown" and c.type != "review"],
               to_confirm=[c.id for c in criteria if c.type == "review"], missing_tests=missing,
               oldest_evidence=dates[0] if dates else None, newest_evidence=dates[-1] if dates else None,
               deceased=deceased)


def outside_row(patient_id: str, order: int, trial: str, deceased: bool = False) -> tuple[Any, ...]:
    """Outside the catalogue's population: every trial of the catalogue requires it, so excluded."""
    return row(KIND_RESULT, patient_id=patient_id, trial=trial, trial_order=order, in_population=False,
               verdict="excluded", criteria=[], excluded_by=[], undecided=[], to_confirm=[], missing_tests=[],
               deceased=deceased)


def patient_row(patient_id: str, in_population: bool, resources: int, gate_ms: float, trials_ms: float,
                deceased: bool = False) -> tuple[Any, ...]:
    return row(KIND_PATIENT, patient_id=patient_id, in_population=in_population, resources=resources,
               gate_ms=gate_ms, trials_ms=trials_ms, deceased=deceased)


def problem_row(kind: str, detail: str | None, count: int, patient_id: str | None = None) -> tuple[Any, ...]:
    return row(KIND_PROBLEM, patient_id=patient_id, problem=kind, detail=detail, count=count)


def is_deceased(patient: Mapping[str, Any]) -> bool:
    """Patient.deceased[x]: true, or a date of death. Not a criterion: it keeps a patient off the worklist."""
    return patient.get("deceasedBoolean") is True or bool(patient.get("deceasedDateTime"))


# -- the partition function ----------------------------------------------------------------

Counter = Callable[[str, int], None]


def unreadable_codes(bundle: Mapping[str, Any], task: ScreenTask) -> list[str]:
    """`Type system,system` (or `Type (no coding)`) for each coded resource no rule can classify."""
    if not task.known_systems:
        return []
    paths = dict(task.code_paths)
    out = []
    for entry in bundle["entry"]:
        res = entry["resource"]
        path = paths.get(str(res.get("resourceType")))
        if not path or res.get("resourceType") == "Patient":
            continue
        concept = res.get(path, res.get(f"{path}CodeableConcept"))
        if not isinstance(concept, Mapping):
            continue  # no code element, or a reference (Medication): not judged here
        codings = concept.get("coding")
        systems = sorted({str(c.get("system")) for c in codings or [] if isinstance(c, Mapping) and c.get("system")})
        if not systems or not task.known_systems.intersection(systems):
            out.append(f"{res['resourceType']} {','.join(systems) or '(no coding)'}")
    return out


def screen_patient(engine: Engine, task: ScreenTask, patient_id: str, lines: Sequence[str],
                   count: Counter, codes: dict[str, int] | None = None) -> list[tuple[Any, ...]]:
    """Rows for one patient; `codes` collects unreadable-code counts (added up per partition)."""
    try:
        bundle, duplicates = assemble(patient_id, lines)
    except RecordProblem as exc:
        count("not-screened", 1)
        return [problem_row(exc.kind, exc.detail, 1, patient_id)]
    rows: list[tuple[Any, ...]] = []
    if duplicates:
        rows.append(problem_row(DUPLICATES, None, duplicates, patient_id))
    chosen = [task.catalogue.trial(t) for t in task.trials]
    deceased = is_deceased(bundle["entry"][0]["resource"])
    started = time.perf_counter()
    try:
        in_population = True
        if task.gate:
            gate = engine.evaluate(bundle, [task.gate], task.at, timeout=task.timeout)
            # Only an explicit false keeps a patient out; a null gate lets the trials decide.
            in_population = gate.raw.get(task.gate, {}).get(POPULATION_DEFINE) is not False
        gated = time.perf_counter()
        results = (evaluate_trials(engine, task.catalogue, bundle, task.at, trials=chosen, timeout=task.timeout)
                   if in_population else [])
    except EngineUnavailable:
        raise
    except EngineError as exc:
        count("not-screened", 1)
        return [*rows, problem_row(EVALUATION_FAILED, str(exc)[:300], 1, patient_id)]
    done = time.perf_counter()
    count("patients", 1)
    if in_population:
        count("in-population", 1)
        for order, result in enumerate(results):
            rows.append(result_row(patient_id, order, result, task.orderable, deceased))
            if result.verdict != "excluded":
                count(f"{result.verdict}:{result.researchStudy}", 1)
    else:
        rows += [outside_row(patient_id, order, trial, deceased) for order, trial in enumerate(task.trials)]
    unreadable = unreadable_codes(bundle, task)
    if codes is not None:
        for detail in unreadable:
            codes[detail] = codes.get(detail, 0) + 1
        if unreadable and not in_population:
            codes[""] = codes.get("", 0) + 1
    rows.append(patient_row(patient_id, in_population, len(bundle["entry"]), (gated - started) * 1000,
                            (done - gated) * 1000, deceased))
    return rows


def screen_partition(task: ScreenTask, count: Counter) -> Callable[[Iterable[Any]], Iterator[tuple[Any, ...]]]:
    """The mapPartitions function over rows of (`key`, `lines`, `n`)."""

    def run(rows: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
        engine: Engine | None = None
        codes: dict[str, int] = {}
        for row in rows:
            key, lines, n = row[0], row[1], row[2]
            if key.startswith(PROBLEM):
                kind, detail = split_problem(key)
                yield problem_row(kind, detail, int(n))
                continue
            if engine is None:
                engine = engine_for(task)
            yield from screen_patient(engine, task, key, lines, count, codes)
        for detail, n in sorted(codes.items()):
            yield problem_row(OUTSIDE_WITH_UNREADABLE if detail == "" else UNREADABLE_CODES, detail or None, n)

    return run
