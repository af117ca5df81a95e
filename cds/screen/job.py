"""The screening job (driver side): read, group, evaluate, write; Spark does the moving.

    lines (Spark text source) -> attribute (JVM JSON parse, cds.screen.bulk)
      -> group by patient (Spark shuffle) -> mapPartitions: gate + trials (cds.screen.worker)
      -> one cached table of rows -> results.parquet, worklist.csv, not-screened.csv,
         summary.json, report.html

The output table is computed once and cached; every file is then a query over it, so the
CQL runs once per patient whatever is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalogue import Catalogue
from ..engine.elm import data_requirements, orderable_codes
from . import bulk
from .worker import (
    DUPLICATES,
    KIND_PATIENT,
    KIND_PROBLEM,
    KIND_RESULT,
    OUTSIDE_WITH_UNREADABLE,
    UNREADABLE_CODES,
    ScreenTask,
    population_library,
    screen_partition,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[*]"
LOG4J2 = Path(__file__).resolve().with_name("log4j2.properties")
RESULTS = "results.parquet"
WORKLIST = "worklist.csv"
NOT_SCREENED = "not-screened.csv"
SUMMARY = "summary.json"
REPORT = "report.html"
RUN = "run.json"


class ScreenError(RuntimeError):
    """The job cannot run as asked (bad input path, unknown trial, no engine)."""


class ScreenFailed(ScreenError):
    """The job started and failed (an executor could not run the engine, storage failed, ...)."""


_EXCEPTION_LINE = re.compile(r"^\s*([\w.]+(?:Error|Exception|Unavailable|Timeout)(?::.*)?)$")


def failure_reason(exc: BaseException) -> str:
    """The line that says what went wrong in a Spark failure (whose text holds whole JVM and Python
    tracebacks), e.g. `cds.engine.pool.EngineUnavailable: Node.js is not installed`."""
    lines = [m.group(1).strip() for m in (_EXCEPTION_LINE.match(x) for x in str(exc).splitlines()) if m]
    python = [x for x in lines if not x.startswith(("org.", "java.", "scala.", "py4j."))]
    chosen = (python or lines or [str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__])[-1]
    return chosen[:400]


def out_schema() -> Any:
    from pyspark.sql import types as T

    s, b, i, d, lng = T.StringType(), T.BooleanType(), T.IntegerType(), T.DoubleType(), T.LongType()
    coding = T.StructType([T.StructField("system", s), T.StructField("code", s), T.StructField("display", s)])
    evidence = T.StructType([T.StructField(n, s) for n in ("reference", "value", "unit", "date", "note")])
    criterion = T.StructType([
        T.StructField("id", s), T.StructField("type", s), T.StructField("status", s),
        T.StructField("evidence", T.ArrayType(evidence)), T.StructField("missing", T.ArrayType(coding)),
    ])
    types = {"kind": s, "patient_id": s, "trial": s, "trial_order": i, "in_population": b, "verdict": s,
             "criteria": T.ArrayType(criterion), "excluded_by": T.ArrayType(s), "undecided": T.ArrayType(s),
             "to_confirm": T.ArrayType(s), "missing_tests": T.ArrayType(coding), "oldest_evidence": s,
             "newest_evidence": s, "problem": s, "detail": s, "count": lng, "resources": i, "gate_ms": d,
             "trials_ms": d, "deceased": b}
    from .worker import OUT_FIELDS

    return T.StructType([T.StructField(name, types[name]) for name in OUT_FIELDS])


RESULT_COLUMNS = ["patient_id", "trial", "in_population", "verdict", "deceased", "excluded_by", "undecided",
                  "missing_tests", "to_confirm", "oldest_evidence", "newest_evidence", "criteria"]


# -- the Spark session ---------------------------------------------------------------------

def master_url(master: str | None) -> str:
    return master or os.environ.get("SPARK_MASTER") or DEFAULT_MASTER


def spark_session(master: str | None = None, *, app_name: str = "trial-cds screen",
                  conf: dict[str, str] | None = None) -> SparkSession:
    """A session on `master` (flag, else SPARK_MASTER, else local[*]); executors run this Python."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - the [screen] extra not installed
        raise ScreenError("PySpark is not installed: pip install -e '.[screen]'") from None
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    url = master_url(master)
    builder = (SparkSession.builder.master(url).appName(app_name)
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
               # The cost is CQL per patient, not bytes: keep the partitions asked for.
               .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
               .config("spark.python.worker.reuse", "true"))
    logging_conf = f"-Dlog4j2.configurationFile={LOG4J2.as_uri()}"
    builder = (builder.config("spark.driver.extraJavaOptions", logging_conf)
               .config("spark.executor.extraJavaOptions", logging_conf))
    if url.startswith("local"):
        builder = builder.config("spark.ui.enabled", "false").config("spark.driver.memory", "2g")
    for k, v in (conf or {}).items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# -- the job -------------------------------------------------------------------------------

@dataclass
class ScreenResult:
    out: Path
    summary: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)


def catalogue_key(catalogue: Catalogue) -> str:
    digest = hashlib.sha256()
    for name in sorted(catalogue.libraries):
        digest.update(name.encode())
        digest.update(json.dumps(catalogue.libraries[name], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def choose_trials(catalogue: Catalogue, wanted: Sequence[str] | None) -> list[str]:
    known = [t.id for t in catalogue.trials]
    if not wanted:
        return known
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ScreenError(f"unknown trial(s): {', '.join(unknown)} (the catalogue has: {', '.join(known)})")
    return [t for t in known if t in set(wanted)]


def run_screen(
    spark: SparkSession,
    source: str,
    out: Path,
    catalogue: Catalogue,
    at: datetime,
    *,
    trials: Sequence[str] | None = None,
    partitions: int | None = None,
    pool_size: int = 1,
    timeout: float = 30.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> ScreenResult:
    """Screen every patient of the Bulk export at `source` against the catalogue; write into `out`.

    Raises ScreenError with a one-line reason for anything that stops the job (a bad path, an
    engine that cannot start on an executor); a patient whose evaluation fails is reported, not fatal."""
    started = time.perf_counter()
    chosen = choose_trials(catalogue, trials)
    if not chosen:
        raise ScreenError("the catalogue has no trial to screen for")
    try:
        return _run(spark, source, out, catalogue, at, chosen, started, partitions=partitions, pool_size=pool_size,
                    timeout=timeout, progress=progress)
    except ScreenError:
        raise
    except Exception as exc:  # Spark wraps an executor's failure in JVM and Python tracebacks
        raise ScreenFailed(f"the screening job failed: {failure_reason(exc)}") from exc


def _run(spark: SparkSession, source: str, out: Path, catalogue: Catalogue, at: datetime, chosen: list[str],
         started: float, *, partitions: int | None, pool_size: int, timeout: float,
         progress: Callable[[dict[str, Any]], None] | None) -> ScreenResult:
    from pyspark import StorageLevel

    from ..engine.engine import execution_time
    from .outputs import write_outputs
    from .progress import DictAccumulator, watch

    gate = population_library(catalogue)
    files, size = bulk.input_files(spark, source)
    if not files:
        raise ScreenError(f"no Bulk FHIR files ({', '.join(bulk.INPUT_SUFFIXES)}) at {source}")
    sc = spark.sparkContext
    if partitions is None:
        # ~4 MB of ndjson a partition, at least 4 per core: even load, frequent progress.
        partitions = max(4 * sc.defaultParallelism, min(2000, math.ceil(size / (4 << 20))))
    spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    names = [catalogue.trial(t).library for t in chosen] + ([gate] if gate else [])
    codes = {url: [(c.system, c.code) for c in vs.codes] for url, vs in catalogue.value_sets.items()}
    read_types = set(data_requirements(names, catalogue.libraries, codes))
    task = ScreenTask(catalogue=catalogue, trials=tuple(chosen), at=execution_time(at), gate=gate,
                      pool_size=pool_size, timeout=timeout, key=catalogue_key(catalogue),
                      orderable=frozenset(orderable_codes(catalogue.libraries, catalogue.value_sets)),
                      known_systems=bulk.code_systems(catalogue.libraries, catalogue.value_sets),
                      code_paths=tuple(sorted(bulk.primary_code_paths().items())))
    shipped = sc.broadcast(task)
    counts = sc.accumulator({}, DictAccumulator())

    def partition(rows: Any) -> Any:
        def count(name: str, n: int) -> None:
            counts.add({name: n})

        return screen_partition(shipped.value, count)(rows)

    lines = spark.read.text(files)
    grouped = bulk.group_by_patient(bulk.attribute(lines, read_types))
    rows = grouped.rdd.mapPartitions(partition)
    table = spark.createDataFrame(rows, out_schema(), verifySchema=False).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        expected = None
        if progress is not None and bulk.patient_files(files):
            # A quick JVM-only line count of the Patient files: the progress display's denominator.
            expected = spark.read.text(bulk.patient_files(files)).where("trim(value) != ''").count()
        with watch(sc, counts, progress, expected=expected):
            total_rows = table.count()
        evaluated = time.perf_counter()
        summary = summarise(table, catalogue, chosen, gate, source, at, files)
        summarised = time.perf_counter()
        write_outputs(spark, table, out, catalogue, chosen, summary, total_rows)
        finished = time.perf_counter()
        patients = patient_stats(table)
    finally:
        table.unpersist()
    run = {
        "master": sc.master, "defaultParallelism": sc.defaultParallelism, "partitions": partitions,
        "inputBytes": size,
        "seconds": {"evaluate": round(evaluated - started, 2), "summarise": round(summarised - evaluated, 2),
                    "write": round(finished - summarised, 2), "total": round(finished - started, 2)},
        "engineSeconds": {"gate": round(patients["gate_ms"] / 1000, 2),
                          "trials": round(patients["trials_ms"] / 1000, 2)},
        "patients": patients["patients"], "inPopulation": patients["population"],
    }
    (out / RUN).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return ScreenResult(out=out, summary=summary, run=run)


def summarise(table: DataFrame, catalogue: Catalogue, chosen: Sequence[str], gate: str | None, source: str,
              at: datetime, files: Sequence[str]) -> dict[str, Any]:
    """Every figure of the report, from four queries over the cached table (deterministic).

    Counts over everyone are Spark aggregations; the per-criterion and per-test figures are
    added up on the driver from the compact rows of patients in the population (the few that
    matter: a catalogue's population is a small share of a health system). One `collect` is one
    Spark job; `toLocalIterator` would be one job per partition."""
    from collections import Counter

    from pyspark.sql import functions as F

    from ..engine.engine import execution_time

    results = table.where(F.col("kind") == KIND_RESULT)
    verdicts: dict[str, dict[str, int]] = {t: {"likely-eligible": 0, "possibly-eligible": 0, "excluded": 0,
                                               "outside-population": 0} for t in chosen}
    for r in results.groupBy("trial", "verdict", "in_population").count().collect():
        slot = r["verdict"] if r["in_population"] else "outside-population"
        verdicts[r["trial"]][slot] += r["count"]

    excluded: Counter[tuple[str, str]] = Counter()
    only: Counter[tuple[str, str]] = Counter()
    undecided: Counter[tuple[str, str]] = Counter()
    missing_by_trial: Counter[tuple[str, str | None, str]] = Counter()
    missing_patients: dict[tuple[str | None, str], set[str]] = {}
    missing_trials: dict[tuple[str | None, str], set[str]] = {}
    displays: dict[tuple[str | None, str], str | None] = {}
    rows = results.where(F.col("in_population")).select("trial", "patient_id", "verdict", "excluded_by", "undecided",
                                                         "missing_tests", "deceased")
    deceased: set[str] = set()
    for r in rows.collect():
        trial = r["trial"]
        if r["deceased"] and r["verdict"] != "excluded":
            deceased.add(r["patient_id"])
        if r["verdict"] == "excluded":
            for cid in r["excluded_by"]:
                excluded[(trial, cid)] += 1
                if len(r["excluded_by"]) == 1:
                    only[(trial, cid)] += 1
        elif r["verdict"] == "possibly-eligible":
            for cid in r["undecided"]:
                undecided[(trial, cid)] += 1
            for m in r["missing_tests"]:
                key = (m["system"], m["code"])
                missing_by_trial[(trial, m["system"], m["code"])] += 1
                missing_patients.setdefault(key, set()).add(r["patient_id"])
                missing_trials.setdefault(key, set()).add(trial)
                if m["display"] and (displays.get(key) is None or m["display"] < str(displays[key])):
                    displays[key] = m["display"]
                displays.setdefault(key, None)

    def ranked(counter: Counter[Any]) -> list[tuple[Any, int]]:
        return sorted(counter.items(), key=lambda kv: (-kv[1], tuple(str(x) for x in kv[0])))

    exclusions: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
    for (trial, cid), n in ranked(excluded):
        exclusions[trial].append({"criterion": cid, "patients": n, "only": only[(trial, cid)]})
    undecided_out: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
    for (trial, cid), n in ranked(undecided):
        undecided_out[trial].append({"criterion": cid, "patients": n})
    by_trial: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
    for (trial, system, code), n in ranked(missing_by_trial):
        by_trial[trial].append({"system": system, "code": code, "display": displays[(system, code)], "patients": n})
    missing = [{"system": k[0], "code": k[1], "display": displays[k], "patients": n, "trials": len(missing_trials[k])}
               for k, n in ranked(Counter({k: len(v) for k, v in missing_patients.items()}))]

    line_problems: dict[str, dict[str, int]] = {}
    patient_problems: dict[str, dict[str, int]] = {}
    is_line = F.col("patient_id").isNull()
    for r in (table.where(F.col("kind") == KIND_PROBLEM)
              .select("problem", F.when(is_line, F.col("detail")).alias("detail"), is_line.alias("line"), "count")
              .groupBy("problem", "detail", "line").agg(F.count(F.lit(1)).alias("rows"), F.sum("count").alias("n"))
              .collect()):
        if r["line"]:
            line_problems.setdefault(r["problem"], {})[r["detail"] or ""] = int(r["n"])
        else:
            patient_problems[r["problem"]] = {"patients": int(r["rows"]), "count": int(r["n"])}
    not_read = line_problems.pop(bulk.NOT_READ, {})
    unreadable = line_problems.pop(UNREADABLE_CODES, {})
    outside_unreadable = sum(line_problems.pop(OUTSIDE_WITH_UNREADABLE, {}).values())
    p = patient_stats(table)
    trial_defs = {t.id: t for t in catalogue.trials}
    return {
        "at": execution_time(at),
        "input": {"source": source, "files": len(files)},
        "populationLibrary": gate,
        "trials": [{"id": t, "title": trial_defs[t].title, "nct": trial_defs[t].nct,
                    "criteria": {c.id: {"type": c.kind, "text": c.text} for c in trial_defs[t].criteria}}
                   for t in chosen],
        "patients": {"screened": p["patients"], "inPopulation": p["population"], "resources": p["resources"],
                     "notScreened": sum(v["patients"] for k, v in patient_problems.items() if k != DUPLICATES),
                     "deceasedCandidates": len(deceased)},
        "verdicts": verdicts,
        "exclusions": exclusions,
        "undecided": undecided_out,
        "missingTests": missing,
        "missingTestsByTrial": by_trial,
        "lineProblems": {k: dict(sorted(v.items())) for k, v in sorted(line_problems.items())},
        "patientProblems": dict(sorted(patient_problems.items())),
        "notReadByRules": dict(sorted(not_read.items())),
        "codesNoRuleReads": {"resources": dict(sorted(unreadable.items(), key=lambda kv: (-kv[1], kv[0]))),
                             "patientsOutsidePopulation": outside_unreadable},
    }


def patient_stats(table: DataFrame) -> dict[str, Any]:
    """Patients screened, in the population, resources evaluated, engine time (gate, trials)."""
    from pyspark.sql import functions as F

    r = table.where(F.col("kind") == KIND_PATIENT).agg(
        F.count(F.lit(1)).alias("patients"), F.sum(F.col("in_population").cast("int")).alias("population"),
        F.sum("resources").alias("resources"), F.sum("gate_ms").alias("gate_ms"),
        F.sum("trials_ms").alias("trials_ms")).first()
    assert r is not None
    return {"patients": int(r["patients"] or 0), "population": int(r["population"] or 0),
            "resources": int(r["resources"] or 0), "gate_ms": float(r["gate_ms"] or 0),
            "trials_ms": float(r["trials_ms"] or 0)}
