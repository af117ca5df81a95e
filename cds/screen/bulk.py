"""Bulk FHIR ndjson in, one row per patient (or per kind of unusable line) out: Spark's part.

A Bulk Data export holds one resource per line, one resource type per file. Every line is
read by Spark's JSON parser (in the JVM, no Python per line) just far enough to know its
type, its id and whose it is; then Spark groups the lines by patient. Python sees each
patient's lines once, in `cds.screen.worker`.

Attribution is strict (a hospital export is no place for guesses): a resource belongs to a
patient only through a well-formed reference, `Patient/<id>` relative, or absolute ending in
it, optionally versioned (`.../_history/<v>`), in `subject` or `patient`; `<id>` a FHIR id
(1-64 of A-Z a-z 0-9 - ., not dots only). A `Patient` is keyed by its own id. Everything else
is counted under a problem key and never evaluated: lines that are not JSON objects, JSON
without a resourceType, a resourceType FHIR R4 does not have, a resource with no usable
patient reference (`Group/..`, `urn:uuid:..`, a display only, none), two references naming
different patients. Types the rules never read (Encounter, ...) are counted and dropped before
the shuffle.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..engine.pool import ENGINE_DIR

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

# Group keys that are not patients start with NUL, which no FHIR id can hold.
PROBLEM = "\u0000"
MALFORMED = "malformed"
NO_RESOURCE_TYPE = "no-resource-type"
UNKNOWN_TYPE = "unknown-resource-type"
NOT_READ = "not-read-by-rules"
BAD_PATIENT_ID = "invalid-patient-id"
NO_PATIENT_REFERENCE = "no-patient-reference"
CONFLICTING_REFERENCES = "conflicting-patient-references"
WRONG_SHAPE = "malformed-resource"

# FHIR id: [A-Za-z0-9\-\.]{1,64}; a reference's last segments name it (R4 3.1.3.4 Literal references).
FHIR_ID = r"[A-Za-z0-9.\-]{1,64}"
PATIENT_REFERENCE = (r"^(?:[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\s]+(?:/[^?#\s]*)?/)?Patient/(" + FHIR_ID
                     + r")(?:/_history/" + FHIR_ID + r")?$")
DOTS_ONLY = r"^\.+$"

INPUT_SUFFIXES = (".ndjson", ".ndjson.gz", ".ndjson.bz2")
MODEL_INFO = ENGINE_DIR / "node_modules" / "cql-exec-fhir" / "lib" / "modelInfos" / "fhir-modelinfo-4.0.1.xml"


@lru_cache(maxsize=1)
def _model_info() -> dict[str, str | None]:
    """Resource type -> its primary code path, from the engine's own FHIR 4.0.1 model info."""
    root = ET.parse(MODEL_INFO).getroot()
    out: dict[str, str | None] = {}
    for node in root:
        if node.tag.rsplit("}", 1)[-1] != "typeInfo":
            continue
        if node.get("baseType") in ("FHIR.DomainResource", "FHIR.Resource") and node.get("name") != "DomainResource":
            out[str(node.get("name"))] = node.get("primaryCodePath")
    if not out:  # pragma: no cover - a broken engine install
        raise RuntimeError(f"no resource types in {MODEL_INFO}")
    return out


def fhir_resource_types() -> frozenset[str]:
    """Every FHIR R4 resource type, as the engine's own FHIR 4.0.1 model info lists them."""
    return frozenset(_model_info())


def primary_code_paths() -> dict[str, str]:
    """Resource type -> the element its code is in (Observation: code, MedicationRequest: medication)."""
    return {k: v for k, v in _model_info().items() if v}


def code_systems(libraries: Mapping[str, Mapping[str, Any]],
                 value_sets: Mapping[str, Any] | None = None) -> frozenset[str]:
    """Every code system the catalogue's rules can read: the ELM's `codesystem` declarations and
    the systems of the codes in its value sets."""
    out = set()
    for elm in libraries.values():
        for d in ((elm.get("library") or {}).get("codeSystems") or {}).get("def") or []:
            if d.get("id"):
                out.add(str(d["id"]))
    for vs in (value_sets or {}).values():
        out.update(str(c.system) for c in getattr(vs, "codes", ()) if getattr(c, "system", None))
    return frozenset(out)


def input_files(spark: SparkSession, path: str) -> tuple[list[str], int]:
    """The ndjson files at `path` (a file, a glob, or a folder of them) and their total size.

    Any Hadoop file system Spark can read works (file:, hdfs:, s3a:, ...)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "the Spark session has no JVM (stopped?)"
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(conf)
    statuses = fs.globStatus(hpath) or []
    files: list[tuple[str, int]] = []
    for status in statuses:
        if status.isDirectory():
            for child in fs.listStatus(status.getPath()):
                name = child.getPath().getName()
                if child.isFile() and name.endswith(INPUT_SUFFIXES) and not name.startswith((".", "_")):
                    files.append((child.getPath().toString(), child.getLen()))
        else:
            files.append((status.getPath().toString(), status.getLen()))
    files.sort()
    return [f for f, _ in files], sum(size for _, size in files)


_PATIENT_FILE = re.compile(r"(?:^|[._-])Patient(?:[._-]|$)")


def patient_files(files: Iterable[str]) -> list[str]:
    """The files named for Patient resources (`Patient.ndjson`, `1.Patient.000.ndjson`, ...), as
    Bulk Data clients name them; used only to tell the progress display how many patients to expect."""
    return [f for f in files if _PATIENT_FILE.search(f.rsplit("/", 1)[-1].split(".ndjson")[0])]


def _problem(kind: str | Column, detail: Column | None = None) -> Column:
    from pyspark.sql import functions as F

    kind_col = F.lit(kind) if isinstance(kind, str) else kind
    if detail is None:
        return F.concat(F.lit(PROBLEM), kind_col)
    return F.concat(F.lit(PROBLEM), kind_col, F.lit(PROBLEM), F.coalesce(detail, F.lit("")))


def patient_of(reference: Column) -> Column:
    """The patient id a reference names; '' when it names none (not well formed); null when absent."""
    from pyspark.sql import functions as F

    pid = F.regexp_extract(reference, PATIENT_REFERENCE, 1)
    return F.when(reference.isNull(), F.lit(None)).when(pid.rlike(DOTS_ONLY), F.lit("")).otherwise(pid)


def attribute(lines: DataFrame, read_types: Iterable[str], known_types: Iterable[str] | None = None) -> DataFrame:
    """`lines` (a `value` column of ndjson lines) -> (`key`, `line`): the patient id and the line,
    or a problem key (NUL + kind [+ NUL + detail]) and a null line. Blank lines are dropped."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    reference = T.StructType([T.StructField("reference", T.StringType())])
    schema = T.StructType([
        T.StructField("resourceType", T.StringType()),
        T.StructField("id", T.StringType()),
        T.StructField("subject", reference),
        T.StructField("patient", reference),
        T.StructField("_corrupt", T.StringType()),
    ])
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt",
               # Strict JSON (RFC 8259): what Python's json module, and so the engine's side, reads.
               "allowSingleQuotes": "false", "allowNonNumericNumbers": "false",
               "allowUnquotedControlChars": "false", "allowBackslashEscapingAnyCharacter": "false"}
    read = sorted(set(read_types) | {"Patient"})
    known = sorted(set(known_types if known_types is not None else fhir_resource_types()))
    value = F.regexp_replace(F.col("value"), "^\uFEFF", "")  # a byte-order mark on a file's first line
    df = lines.select(value.alias("line")).where(F.trim(F.col("line")) != "")
    df = df.withColumn("j", F.from_json("line", schema, options))
    rtype = F.col("j.resourceType")
    subject = patient_of(F.col("j.subject.reference"))
    patient = patient_of(F.col("j.patient.reference"))
    own_id = F.col("j.id")
    key = (
        F.when(F.col("j").isNull() | (rtype.isNull() & F.col("j._corrupt").isNotNull()), _problem(MALFORMED))
        .when(rtype.isNull(), _problem(NO_RESOURCE_TYPE))
        .when(~rtype.isin(*known), _problem(UNKNOWN_TYPE, F.substring(rtype, 1, 64)))
        .when(~rtype.isin(*read), _problem(NOT_READ, rtype))
        .when(F.col("j._corrupt").isNotNull(), _problem(WRONG_SHAPE, rtype))
        .when(rtype == "Patient",
              F.when(own_id.rlike("^" + FHIR_ID + "$") & ~own_id.rlike(DOTS_ONLY), own_id)
              .otherwise(_problem(BAD_PATIENT_ID)))
        .when((subject == "") | (patient == "") | (subject.isNull() & patient.isNull()),
              _problem(NO_PATIENT_REFERENCE, rtype))
        .when(subject.isNotNull() & patient.isNotNull() & (subject != patient), _problem(CONFLICTING_REFERENCES, rtype))
        .otherwise(F.coalesce(subject, patient))
    )
    is_patient = ~key.startswith(PROBLEM)
    return df.select(key.alias("key"), F.when(is_patient, F.col("line")).alias("line"))


def group_by_patient(attributed: DataFrame) -> DataFrame:
    """(`key`, `lines`, `n`): each patient's lines; for a problem key, no lines and the count."""
    from pyspark.sql import functions as F

    return attributed.groupBy("key").agg(F.collect_list("line").alias("lines"), F.count(F.lit(1)).alias("n"))


def split_problem(key: str) -> tuple[str, str | None]:
    """(kind, detail) of a problem key."""
    kind, _, detail = key[len(PROBLEM):].partition(PROBLEM)
    return kind, (detail or None)
