"""Population screening: which patients of a Bulk FHIR export may join which trial (Spark).

`trial-cds screen EXPORT --out DIR` (see `cds.screen.job.run_screen`) runs the catalogue's
population gate and every trial's CQL, in the service's own engine, for every patient of a
Bulk Data export, on a local Spark or a cluster, and writes results.parquet, worklist.csv,
not-screened.csv, summary.json and report.html. Needs the `[screen]` extra (PySpark) and Java.
"""

from .job import (
    ScreenError,
    ScreenFailed,
    ScreenResult,
    master_url,
    run_screen,
    spark_session,
)

__all__ = ["ScreenError", "ScreenFailed", "ScreenResult", "master_url", "run_screen", "spark_session"]
