"""The files of a screening run, written from the cached output table.

- `results.parquet/`: one row per patient x trial (Spark writes it; sorted by patient, then trial
  in catalogue order): verdict, whether the patient is in the catalogue's population, the
  criteria that exclude, those left undecided, the tests missing for them, the review items,
  the oldest and newest evidence date, and every criterion with status, evidence and missing codes.
- `worklist.csv`: the coordinator's list, likely-eligible first, then possibly-eligible with what
  to order; per trial in catalogue order, fewest undecided criteria first. Patients recorded as
  deceased are left off (they keep their verdicts in the Parquet table; the report counts them).
- `not-screened.csv`: patients the job could not screen without guessing, and why.
- `summary.json`: every figure of the report (deterministic: a rerun writes the same bytes).
- `report.html`: the report (cds.screen.report).
Run timings go to `run.json`, apart, so that the files above do not change between reruns.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalogue import Catalogue
from .worker import KIND_PROBLEM, KIND_RESULT

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ROWS_PER_FILE = 500_000
WORKLIST_HEADER = ["verdict", "trial", "trial_title", "patient_id", "undecided", "to_order", "to_confirm",
                   "oldest_evidence", "newest_evidence"]
VERDICT_ORDER = {"likely-eligible": 0, "possibly-eligible": 1}


def _coding_text(m: Any) -> str:
    label = m["display"] or m["code"]
    return f"{label} ({m['system']}|{m['code']})" if m["system"] else f"{label} ({m['code']})"


def write_outputs(spark: SparkSession, table: DataFrame, out: Path, catalogue: Catalogue, chosen: Sequence[str],
                  summary: dict[str, Any], total_rows: int) -> None:
    from pyspark.sql import functions as F

    from .job import NOT_SCREENED, REPORT, RESULT_COLUMNS, RESULTS, SUMMARY, WORKLIST
    from .report import render

    out.mkdir(parents=True, exist_ok=True)
    results = table.where(F.col("kind") == KIND_RESULT)
    files = max(1, math.ceil(total_rows / ROWS_PER_FILE))
    # The table's partitions are Spark's hash partitions of the patient ids (deterministic), so
    # coalescing them and sorting within gives the same files on a rerun without another shuffle.
    (results.select(*RESULT_COLUMNS, "trial_order").coalesce(files).sortWithinPartitions("patient_id", "trial_order")
     .drop("trial_order").write.mode("overwrite").option("compression", "zstd").parquet(str(out / RESULTS)))

    titles = {t.id: t.title for t in catalogue.trials}
    # Candidates and unscreened patients are few (a share of the population); one collect each.
    candidates = results.where(F.col("verdict").isin(*VERDICT_ORDER) & ~F.col("deceased")).collect()
    worklist = sorted(candidates, key=lambda r: (VERDICT_ORDER[r["verdict"]], r["trial_order"], len(r["undecided"]),
                                                 r["patient_id"]))
    with (out / WORKLIST).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(WORKLIST_HEADER)
        for r in worklist:
            writer.writerow([r["verdict"], r["trial"], titles.get(r["trial"], ""), r["patient_id"],
                             " ".join(r["undecided"]), "; ".join(_coding_text(m) for m in r["missing_tests"]),
                             len(r["to_confirm"]), r["oldest_evidence"] or "", r["newest_evidence"] or ""])

    not_screened = (table.where((F.col("kind") == KIND_PROBLEM) & F.col("patient_id").isNotNull()
                                & (F.col("problem") != "duplicate-lines"))
                    .select("patient_id", "problem", "detail").collect())
    with (out / NOT_SCREENED).open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "problem", "detail"])
        for r in sorted(not_screened, key=lambda r: (r["patient_id"], r["problem"])):
            writer.writerow([r["patient_id"], r["problem"], r["detail"] or ""])

    (out / SUMMARY).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT).write_text(render(summary), encoding="utf-8")
