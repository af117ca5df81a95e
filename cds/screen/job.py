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
    ScreenTask,
    population_library,
    screen_partition,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DEFAULT_MASTER = "local[*]"
RESULTS = "results.parquet"
WORKLIST = "worklist.csv"
NOT_SCREENED = "not-screened.csv"
SUMMARY = "summary.json"
REPORT = "report.html"
RUN = "run.json"


class ScreenError(RuntimeError):
    """The job cannot run as asked (bad input path, unknown trial, no engine)."""


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
             "trials_ms": d}
    from .worker import OUT_FIELDS

    return T.StructType([T.StructField(name, types[name]) for name in OUT_FIELDS])


RESULT_COLUMNS = ["patient_id", "trial", "in_population", "verdict", "excluded_by", "undecided", "missing_tests",
                  "to_confirm", "oldest_evidence", "newest_evidence", "criteria"]


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
    """Screen every patient of the Bulk export at `source` against the catalogue; write into `out`."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from ..engine.engine import execution_time
    from .outputs import write_outputs
    from .progress import DictAccumulator, watch

    started = time.perf_counter()
    chosen = choose_trials(catalogue, trials)
    if not chosen:
        raise ScreenError("the catalogue has no trial to screen for")
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
    read_types = set(data_requirements(names, catalogue.libraries))
    task = ScreenTask(catalogue=catalogue, trials=tuple(chosen), at=execution_time(at), gate=gate,
                      pool_size=pool_size, timeout=timeout, key=catalogue_key(catalogue),
                      orderable=frozenset(orderable_codes(catalogue.libraries)))
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
        with watch(sc, counts, progress):
            total_rows = table.count()
        evaluated = time.perf_counter()
        summary = summarise(table, catalogue, chosen, gate, source, at, files)
        write_outputs(spark, table, out, catalogue, chosen, summary, total_rows)
        finished = time.perf_counter()
        patients = table.where(F.col("kind") == KIND_PATIENT).agg(
            F.count(F.lit(1)).alias("n"), F.sum("gate_ms").alias("gate"), F.sum("trials_ms").alias("trials"),
            F.sum(F.col("in_population").cast("int")).alias("population")).first()
        assert patients is not None
    finally:
        table.unpersist()
    run = {
        "master": sc.master, "defaultParallelism": sc.defaultParallelism, "partitions": partitions,
        "inputBytes": size, "seconds": {"evaluate": round(evaluated - started, 2), "write": round(finished - evaluated, 2),
                                        "total": round(finished - started, 2)},
        "engineSeconds": {"gate": round((patients["gate"] or 0) / 1000, 2),
                          "trials": round((patients["trials"] or 0) / 1000, 2)},
        "patients": patients["n"], "inPopulation": patients["population"],
    }
    (out / RUN).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return ScreenResult(out=out, summary=summary, run=run)


def summarise(table: DataFrame, catalogue: Catalogue, chosen: Sequence[str], gate: str | None, source: str,
              at: datetime, files: Sequence[str]) -> dict[str, Any]:
    """Every figure of the report, computed by Spark over the cached table (deterministic)."""
    from pyspark.sql import functions as F

    from ..engine.engine import execution_time

    results = table.where(F.col("kind") == KIND_RESULT)
    problems = table.where(F.col("kind") == KIND_PROBLEM)
    patients = table.where(F.col("kind") == KIND_PATIENT)
    p = patients.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("in_population").cast("int")).alias("pop"),
                     F.sum("resources").alias("resources")).first()
    assert p is not None
    verdicts: dict[str, dict[str, int]] = {t: {"likely-eligible": 0, "possibly-eligible": 0, "excluded": 0,
                                               "outside-population": 0} for t in chosen}
    for r in results.groupBy("trial", "verdict", "in_population").count().collect():
        slot = r["verdict"] if r["in_population"] else "outside-population"
        verdicts[r["trial"]][slot] += r["count"]
    exclusions: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
    for r in (results.where(F.col("in_population") & (F.col("verdict") == "excluded"))
              .select("trial", F.explode("excluded_by").alias("criterion"), (F.size("excluded_by") == 1).alias("sole"))
              .groupBy("trial", "criterion").agg(F.count(F.lit(1)).alias("patients"),
                                                 F.sum(F.col("sole").cast("int")).alias("only"))
              .orderBy(F.desc("patients"), "trial", "criterion").collect()):
        exclusions[r["trial"]].append({"criterion": r["criterion"], "patients": r["patients"], "only": r["only"]})
    undecided: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
    for r in (results.where(F.col("verdict") == "possibly-eligible")
              .select("trial", F.explode("undecided").alias("criterion"))
              .groupBy("trial", "criterion").count().orderBy(F.desc("count"), "trial", "criterion").collect()):
        undecided[r["trial"]].append({"criterion": r["criterion"], "patients": r["count"]})
    possibly = results.where(F.col("verdict") == "possibly-eligible").select(
        "trial", "patient_id", F.explode("missing_tests").alias("m"))
    missing_by_trial: dict[str, list[dict[str, Any]]] = {t: [] for t in chosen}
    for r in (possibly.groupBy("trial", "m.system", "m.code").agg(
              F.countDistinct("patient_id").alias("patients"), F.min("m.display").alias("display"))
              .orderBy(F.desc("patients"), "trial", "system", "code").collect()):
        missing_by_trial[r["trial"]].append({"system": r["system"], "code": r["code"], "display": r["display"],
                                             "patients": r["patients"]})
    missing = [{"system": r["system"], "code": r["code"], "display": r["display"], "patients": r["patients"],
                "trials": r["trials"]}
               for r in possibly.groupBy("m.system", "m.code").agg(
                   F.countDistinct("patient_id").alias("patients"), F.min("m.display").alias("display"),
                   F.countDistinct("trial").alias("trials"))
               .orderBy(F.desc("patients"), "system", "code").collect()]
    line_problems: dict[str, dict[str, int]] = {}
    for r in (problems.where(F.col("patient_id").isNull()).groupBy("problem", "detail")
              .agg(F.sum("count").alias("n")).collect()):
        line_problems.setdefault(r["problem"], {})[r["detail"] or ""] = int(r["n"])
    patient_problems: dict[str, dict[str, int]] = {
        r["problem"]: {"patients": int(r["patients"]), "count": int(r["n"])}
        for r in (problems.where(F.col("patient_id").isNotNull()).groupBy("problem")
                  .agg(F.count(F.lit(1)).alias("patients"), F.sum("count").alias("n")).collect())}
    not_read = line_problems.pop(bulk.NOT_READ, {})
    trial_defs = {t.id: t for t in catalogue.trials}
    return {
        "at": execution_time(at),
        "input": {"source": source, "files": len(files)},
        "populationLibrary": gate,
        "trials": [{"id": t, "title": trial_defs[t].title, "nct": trial_defs[t].nct,
                    "criteria": {c.id: {"type": c.kind, "text": c.text} for c in trial_defs[t].criteria}}
                   for t in chosen],
        "patients": {"screened": int(p["n"] or 0), "inPopulation": int(p["pop"] or 0),
                     "resources": int(p["resources"] or 0),
                     "notScreened": sum(v["patients"] for k, v in patient_problems.items() if k != DUPLICATES)},
        "verdicts": verdicts,
        "exclusions": exclusions,
        "undecided": undecided,
        "missingTests": missing,
        "missingTestsByTrial": missing_by_trial,
        "lineProblems": {k: dict(sorted(v.items())) for k, v in sorted(line_problems.items())},
        "patientProblems": dict(sorted(patient_problems.items())),
        "notReadByRules": dict(sorted(not_read.items())),
    }
