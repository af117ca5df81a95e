"""Benchmark of the CQL engines through the Python API, both engines side by side.

For each engine (the reference engine, cql-execution's interpreter; the compiled engine) on the
same patients in one run, measures on this machine:
  - cold start: `Engine.start()` (spawn the Node worker, load and compile the libraries, warm-up
    call), and the worker's own compile time at load;
  - worker CPU per patient (p50/p95), as the worker reports it for each call (process.cpuUsage:
    other load on the machine does not inflate it much), and patients/s per core (1000 / CPU);
  - warm latency (p50/p95/p99) of `Engine.evaluate` with one caller, as the service calls it
    (trimmed record, only the criteria defines back);
  - throughput in patients/s with 2 callers per worker;
  - resident memory (VmRSS, peak VmHWM) of each worker;
and the ratio compiled / reference of each.

Targets (issue 14): compiled CPU >= 20x less than the reference; five trials p95 <= 10 ms warm
through the Python API; cold start <= 2 s.

Mode: when rules/elm holds trial libraries (anything but FHIRHelpers, SLECommon and SLEScreen)
they are evaluated ("trials" mode) on the synthetic patients in fhir_bundles/patients/*.json.
Without trial libraries, or with --mode stand-in, five stand-in libraries are generated here
(code-list retrieves, latest result in a window, thresholds, an evidence list), translated with
the project's FHIRHelpers, and evaluated on generated bundles of 50-150 resources.

    .venv/bin/python bench/evaluate.py            # both engines, about two minutes
    .venv/bin/python bench/evaluate.py --engines compiled --pool-sizes 1,2
    .venv/bin/python bench/evaluate.py --profile compiled.cpuprofile   # where the time goes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cds.engine import Engine, EngineError, elm
from cds.engine.engine import execution_time, load_elm_dir
from cds.engine.pool import ENGINE_DIR
from cds.engine.translator import Translator
from cds.engine.trim import trim_bundle
from cds.paths import ELM_DIR, PATIENTS_DIR, RULES_DIR

SHARED_LIBRARIES = {"FHIRHelpers", "SLECommon", "SLEScreen"}  # not trials: included or screening
TARGET_P95_MS = 10.0
TARGET_COLD_S = 2.0
STAND_IN_AT = "2026-03-01T09:00:00Z"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "https://trial-cds.dev/codes"
UCUM = "http://unitsofmeasure.org"

# -- stand-in catalogue ---------------------------------------------------------------------------

# analyte: (codes [(system, code)], UCUM unit, plausible range of values)
ANALYTES: dict[str, tuple[list[tuple[str, str]], str, tuple[float, float]]] = {
    "Creatinine": ([(LOINC, "2160-0"), (LOINC, "38483-4")], "mg/dL", (0.4, 2.6)),
    "eGFR": ([(LOINC, "98979-8"), (LOINC, "62238-1")], "mL/min/{1.73_m2}", (15, 130)),
    "ALT": ([(LOINC, "1742-6")], "U/L", (6, 160)),
    "AST": ([(LOINC, "1920-8")], "U/L", (6, 160)),
    "Bilirubin": ([(LOINC, "1975-2"), (LOINC, "42719-5")], "mg/dL", (0.2, 3.2)),
    "Hemoglobin": ([(LOINC, "718-7")], "g/dL", (6.5, 16.5)),
    "Platelets": ([(LOINC, "777-3"), (LOINC, "26515-7")], "10*3/uL", (30, 420)),
    "Neutrophils": ([(LOINC, "751-8"), (LOINC, "26499-4")], "10*3/uL", (0.3, 8.5)),
    "Leukocytes": ([(LOINC, "6690-2"), (LOINC, "26464-8")], "10*3/uL", (1.2, 13)),
    "Lymphocytes": ([(LOINC, "731-0")], "10*3/uL", (0.2, 4.2)),
    "Anti-dsDNA": ([(LOINC, "5130-0")], "[IU]/mL", (1, 400)),
    "C3": ([(LOINC, "4485-9")], "mg/dL", (35, 180)),
    "C4": ([(LOINC, "4498-2")], "mg/dL", (4, 50)),
    "SLEDAI": ([(LOCAL, "sledai-2k")], "{score}", (0, 24)),
    "LVEF": ([(LOINC, "10230-1"), (LOINC, "18043-0")], "%", (30, 72)),
    "UPCR": ([(LOINC, "2890-2")], "mg/g", (50, 3500)),
}
# Results that no stand-in rule reads (trimmed away before the call).
OTHER_LABS = [("2345-7", "mg/dL", (60, 180)), ("2823-3", "mmol/L", (3.2, 5.4)), ("2951-2", "mmol/L", (132, 146)),
              ("17861-6", "mg/dL", (8, 10.6)), ("2885-2", "g/dL", (6, 8.3)), ("1751-7", "g/dL", (3, 5)),
              ("2093-3", "mg/dL", (120, 260)), ("8867-4", "/min", (55, 110)), ("8480-6", "mm[Hg]", (100, 160)),
              ("29463-7", "kg", (45, 110)), ("8302-2", "cm", (150, 190)), ("4548-4", "%", (4.5, 8))]

CONDITIONS: dict[str, list[tuple[str, str]]] = {
    "SLE": [(SNOMED, "55464009"), (ICD10, "M32.9"), (ICD10, "M32.14"), (SNOMED, "239887007")],
    "Lupus Nephritis": [(SNOMED, "68815009"), (ICD10, "M32.14")],
    "Malignancy": [(SNOMED, "363346000"), (ICD10, "C80.1")],
    "Hepatitis B": [(SNOMED, "66071002"), (ICD10, "B18.1")],
    "HIV": [(SNOMED, "86406008"), (ICD10, "B20")],
    "Heart Failure": [(SNOMED, "84114007"), (ICD10, "I50.9")],
    "Stroke": [(SNOMED, "230690007"), (ICD10, "I63.9")],
    "Tuberculosis": [(SNOMED, "56717001"), (ICD10, "A15.0")],
}
OTHER_CONDITIONS = [(SNOMED, "38341003"), (SNOMED, "44054006"), (SNOMED, "195967001"), (ICD10, "E78.5"),
                    (SNOMED, "35489007"), (ICD10, "K21.9")]

MEDICATIONS: dict[str, list[tuple[str, str]]] = {
    "Rituximab": [(RXNORM, "121191")],
    "Belimumab": [(RXNORM, "1117328")],
    "Cyclophosphamide": [(RXNORM, "3002")],
    "Glucocorticoids": [(RXNORM, "8640"), (RXNORM, "6902"), (RXNORM, "5492")],
    "Mycophenolate": [(RXNORM, "68149"), (RXNORM, "236778")],
    "Hydroxychloroquine": [(RXNORM, "5521")],
}
OTHER_MEDICATIONS = [(RXNORM, "1191"), (RXNORM, "29046"), (RXNORM, "6809"), (RXNORM, "83367")]

SYSTEM_NAMES = {LOINC: "LOINC", SNOMED: "SNOMEDCT", ICD10: "ICD10CM", RXNORM: "RxNorm", LOCAL: "Local"}


@dataclass(frozen=True)
class TrialShape:
    name: str
    labs: list[tuple[str, str, float]]  # analyte, comparator, threshold (in the analyte's unit)
    exclusions: list[str]  # condition names
    recent_drugs: list[str]  # excluded if ordered in the last 6 months
    age: tuple[int, int]


STAND_INS = [
    TrialShape("StandInCD19CarTSLE", [("Creatinine", "<=", 1.5), ("eGFR", ">=", 60), ("ALT", "<=", 120),
                                      ("AST", "<=", 120), ("Neutrophils", ">=", 1.0), ("Platelets", ">=", 50),
                                      ("SLEDAI", ">=", 8)],
               ["Malignancy", "Hepatitis B", "HIV"], ["Rituximab", "Cyclophosphamide"], (18, 65)),
    TrialShape("StandInBCMACarTLN", [("Creatinine", "<=", 2.0), ("UPCR", ">=", 500), ("Hemoglobin", ">=", 8),
                                     ("Platelets", ">=", 75), ("Lymphocytes", ">=", 0.5), ("C3", "<", 90)],
               ["Malignancy", "HIV", "Tuberculosis", "Heart Failure"], ["Belimumab", "Rituximab"], (18, 70)),
    TrialShape("StandInCD19BCMADual", [("eGFR", ">=", 45), ("Bilirubin", "<=", 1.8), ("ALT", "<=", 100),
                                       ("Leukocytes", ">=", 2.5), ("Anti-dsDNA", ">=", 30), ("LVEF", ">=", 50)],
               ["Malignancy", "Hepatitis B", "Stroke"], ["Cyclophosphamide", "Mycophenolate"], (18, 60)),
    TrialShape("StandInCD19CarTRefractory", [("Creatinine", "<=", 1.8), ("Hemoglobin", ">=", 9),
                                             ("Neutrophils", ">=", 1.5), ("C4", "<", 10), ("SLEDAI", ">=", 6),
                                             ("AST", "<=", 100)],
               ["HIV", "Tuberculosis", "Heart Failure"], ["Rituximab", "Belimumab", "Glucocorticoids"], (16, 65)),
    TrialShape("StandInAllogeneicCarT", [("eGFR", ">=", 30), ("Platelets", ">=", 100), ("LVEF", ">=", 45),
                                         ("Bilirubin", "<=", 2.0), ("Lymphocytes", ">=", 0.3), ("UPCR", "<", 3000)],
               ["Malignancy", "Hepatitis B", "Stroke", "Tuberculosis"], ["Mycophenolate", "Hydroxychloroquine"],
               (18, 75)),
]


def _ident(name: str) -> str:
    return name.replace("-", " ")


def _code_list(codes: list[tuple[str, str]]) -> str:
    return "{ " + ", ".join(f"Code '{c}' from \"{SYSTEM_NAMES[s]}\"" for s, c in codes) + " }"


def stand_in_cql(shape: TrialShape) -> str:
    """One stand-in trial library: ~20-25 defines of the shapes real eligibility rules have."""
    lines = [
        f"library {shape.name} version '1.0.0'",
        "",
        "using FHIR version '4.0.1'",
        "",
        "include FHIRHelpers version '4.0.1'",
        "",
        *[f"codesystem \"{n}\": '{s}'" for s, n in SYSTEM_NAMES.items()],
        "codesystem \"ConditionClinical\": 'http://terminology.hl7.org/CodeSystem/condition-clinical'",
        "",
        "code \"Active\": 'active' from \"ConditionClinical\"",
        "code \"Relapse\": 'relapse' from \"ConditionClinical\"",
        "",
        "parameter \"Lab Window\" System.Quantity default 90 days",
        "parameter \"Drug Window\" System.Quantity default 6 months",
        "",
        f"define \"SLE Codes\": {_code_list(CONDITIONS['SLE'])}",
    ]
    for analyte, _, _ in shape.labs:
        lines.append(f"define \"{_ident(analyte)} Codes\": {_code_list(ANALYTES[analyte][0])}")
    for cond in shape.exclusions:
        lines.append(f"define \"{cond} Codes\": {_code_list(CONDITIONS[cond])}")
    drug_codes = sorted({c for d in shape.recent_drugs for c in MEDICATIONS[d]})
    lines += [
        f"define \"Excluded Drug Codes\": {_code_list(drug_codes)}",
        "",
        "context Patient",
        "",
        "define function \"Effective\"(O Observation):",
        "  FHIRHelpers.ToDateTime(O.effective as FHIR.dateTime)",
        "define function \"Latest In Window\"(obs List<Observation>, window System.Quantity):",
        "  Last(obs O",
        "    where O.status.value in { 'final', 'amended', 'corrected' }",
        "      and \"Effective\"(O) during Interval[Now() - window, Now()]",
        "    sort by FHIRHelpers.ToDateTime(effective as FHIR.dateTime))",
        "define function \"Is Active\"(C Condition):",
        "  C.clinicalStatus ~ \"Active\" or C.clinicalStatus ~ \"Relapse\"",
        "",
        "define \"Age\": AgeInYearsAt(Today())",
        f"define \"Age OK\": \"Age\" between {shape.age[0]} and {shape.age[1]}",
        "define \"Has SLE\": exists ([Condition: \"SLE Codes\"] C where \"Is Active\"(C))",
    ]
    criteria = ["\"Age OK\"", "\"Has SLE\""]
    evidence = []
    for analyte, op, threshold in shape.labs:
        a = _ident(analyte)
        unit = ANALYTES[analyte][1]
        lines += [
            f"define \"Latest {a}\": \"Latest In Window\"([Observation: \"{a} Codes\"], \"Lab Window\")",
            f"define \"{a} OK\": (\"Latest {a}\".value as FHIR.Quantity) {op} {threshold} '{unit}'",
        ]
        criteria.append(f"\"{a} OK\"")
        evidence.append(f"Tuple {{ criterion: '{a}', met: \"{a} OK\", "
                        f"value: (\"Latest {a}\".value as FHIR.Quantity), date: \"Effective\"(\"Latest {a}\") }}")
    exclusions = []
    for cond in shape.exclusions:
        lines.append(f"define \"Has {cond}\": exists ([Condition: \"{cond} Codes\"] C where \"Is Active\"(C))")
        exclusions.append(f"\"Has {cond}\"")
    lines += [
        "define \"Recent Excluded Drug\":",
        "  exists ([MedicationRequest] M",
        "    where M.status.value in { 'active', 'completed' }",
        "      and M.medication is FHIR.CodeableConcept",
        "      and exists (((M.medication as FHIR.CodeableConcept).coding) C",
        "        where FHIRHelpers.ToCode(C) in \"Excluded Drug Codes\")",
        "      and FHIRHelpers.ToDateTime(M.authoredOn) during Interval[Now() - \"Drug Window\", Now()])",
        f"define \"Inclusion Met\": {' and '.join(criteria)}",
        f"define \"Exclusion Met\": {' or '.join(exclusions)} or \"Recent Excluded Drug\"",
        "define \"Eligible\": \"Inclusion Met\" and not \"Exclusion Met\"",
        "define \"Evidence\": {",
        "  " + ",\n  ".join(evidence),
        "}",
        "define \"Unknown Criteria\": \"Evidence\" E where E.met is null return E.criterion",
    ]
    return "\n".join(lines) + "\n"


def _observation(rng: random.Random, pid: str, n: int, system: str, code: str, unit: str,
                 lo: float, hi: float, when: datetime) -> dict[str, Any]:
    status = "final" if rng.random() > 0.05 else rng.choice(["preliminary", "entered-in-error", "amended"])
    return {"resourceType": "Observation", "id": f"{pid}-obs-{n}", "status": status,
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "valueQuantity": {"value": round(rng.uniform(lo, hi), 2), "unit": unit, "system": UCUM, "code": unit}}


def synthetic_patient(rng: random.Random, index: int, at: datetime) -> dict[str, Any]:
    """One record of 50-150 resources: labs over two years, conditions, medications, noise."""
    pid = f"bench-{index}"
    target = rng.randint(50, 150)
    birth = at - timedelta(days=rng.randint(16 * 365, 75 * 365))
    res: list[dict[str, Any]] = [{"resourceType": "Patient", "id": pid,
                                  "gender": rng.choice(["female", "female", "female", "male"]),
                                  "birthDate": birth.date().isoformat()}]

    def when(max_days: int) -> datetime:
        return at - timedelta(days=rng.randint(1, max_days), minutes=rng.randint(0, 1440))

    # Conditions: most patients have SLE; a few exclusions; everyday comorbidities.
    others = [c for c in sorted(CONDITIONS) if c != "SLE"]
    conds = (["SLE"] if rng.random() < 0.85 else []) + rng.sample(others, rng.randint(0, 2))
    for i, name in enumerate(conds):
        system, code = rng.choice(CONDITIONS[name])
        res.append({"resourceType": "Condition", "id": f"{pid}-cond-{i}", "subject": {"reference": f"Patient/{pid}"},
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                   "code": rng.choice(["active", "active", "relapse", "resolved"])}]},
                    "code": {"coding": [{"system": system, "code": code}]},
                    "onsetDateTime": when(3000).date().isoformat()})
    for i in range(rng.randint(1, 4)):
        system, code = rng.choice(OTHER_CONDITIONS)
        res.append({"resourceType": "Condition", "id": f"{pid}-other-{i}", "subject": {"reference": f"Patient/{pid}"},
                    "code": {"coding": [{"system": system, "code": code}]}})
    # Medications.
    meds = [c for name in rng.sample(sorted(MEDICATIONS), rng.randint(1, 3)) for c in MEDICATIONS[name][:1]]
    meds += rng.sample(OTHER_MEDICATIONS, rng.randint(1, 3))
    for i, (system, code) in enumerate(meds):
        res.append({"resourceType": "MedicationRequest", "id": f"{pid}-mr-{i}",
                    "status": rng.choice(["active", "completed", "stopped"]), "intent": "order",
                    "subject": {"reference": f"Patient/{pid}"},
                    "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
                    "authoredOn": when(720).isoformat(timespec="seconds").replace("+00:00", "Z")})
    # Encounters and procedures nobody retrieves.
    for i in range(rng.randint(2, 8)):
        res.append({"resourceType": "Encounter", "id": f"{pid}-enc-{i}", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": when(720).isoformat(timespec="seconds").replace("+00:00", "Z")}})
    # Labs to fill the record: rule analytes (several draws each) and others.
    n = 0
    analytes = sorted(ANALYTES)
    while len(res) < target:
        if rng.random() < 0.6:
            a = rng.choice(analytes)
            codes, unit, (lo, hi) = ANALYTES[a]
            system, code = rng.choice(codes)
        else:
            code, unit, (lo, hi) = rng.choice(OTHER_LABS)
            system = LOINC
        res.append(_observation(rng, pid, n, system, code, unit, lo, hi, when(540)))
        n += 1
    return {"resourceType": "Bundle", "type": "collection", "id": pid,
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in res]}


# -- catalogue loading ----------------------------------------------------------------------------


@dataclass
class Catalogue:
    mode: str
    note: str
    libraries: dict[str, dict[str, Any]]
    evaluate: list[str]
    patients: list[dict[str, Any]]
    patients_note: str
    at: str
    translate_s: float | None = None


def _fhirhelpers_elm(translator: Translator) -> dict[str, Any]:
    elm_file = ELM_DIR / "FHIRHelpers.json"
    if elm_file.exists():
        return json.loads(elm_file.read_text(encoding="utf-8"))
    t = translator.translate((RULES_DIR / "FHIRHelpers.cql").read_text(encoding="utf-8"))
    if not t.ok or t.elm is None:
        raise SystemExit("rules/FHIRHelpers.cql does not translate: " + "; ".join(m.message for m in t.errors))
    return t.elm


def load_catalogue(args: argparse.Namespace) -> Catalogue:
    compiled = load_elm_dir(ELM_DIR) if ELM_DIR.is_dir() else {}
    trials = sorted(n for n in compiled if n not in SHARED_LIBRARIES)
    if args.mode == "trials" and not trials:
        raise SystemExit(f"--mode trials: no trial libraries in {ELM_DIR}")
    if trials and args.mode != "stand-in":
        patients = []
        for path in sorted(PATIENTS_DIR.glob("*.json"))[: args.patients]:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
                patients.append(doc)
        at = args.at or datetime.now(UTC).isoformat(timespec="seconds")
        if patients:
            note = f"{len(patients)} bundles from {PATIENTS_DIR.relative_to(ROOT)}"
        else:
            rng = random.Random(args.seed)
            when = datetime.fromisoformat(at.replace("Z", "+00:00"))
            patients = [synthetic_patient(rng, i, when) for i in range(args.patients)]
            note = f"{len(patients)} generated bundles (no patients in {PATIENTS_DIR.relative_to(ROOT)})"
        return Catalogue("trials", f"{len(trials)} trial libraries from {ELM_DIR.relative_to(ROOT)}",
                         compiled, trials, patients, note, at)

    if not (RULES_DIR / "FHIRHelpers.cql").exists() and "FHIRHelpers" not in compiled:
        raise SystemExit("stand-in mode needs rules/FHIRHelpers.cql")
    started = time.perf_counter()
    libraries: dict[str, dict[str, Any]] = {}
    with Translator([RULES_DIR]) as translator:
        libraries["FHIRHelpers"] = _fhirhelpers_elm(translator)
        for shape in STAND_INS[: args.libraries]:
            t = translator.translate(stand_in_cql(shape))
            if not t.ok or t.elm is None:
                raise SystemExit(f"stand-in {shape.name} does not translate:\n"
                                 + "\n".join(m.format(shape.name) for m in t.errors))
            libraries[shape.name] = t.elm
    translate_s = time.perf_counter() - started
    at = args.at or STAND_IN_AT
    rng = random.Random(args.seed)
    when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    patients = [synthetic_patient(rng, i, when) for i in range(args.patients)]
    why = "no trial catalogue in rules/elm" if not trials else "--mode stand-in"
    return Catalogue("stand-in", f"{len(libraries) - 1} generated stand-in libraries ({why})", libraries,
                     [s.name for s in STAND_INS[: args.libraries]], patients,
                     f"{len(patients)} generated bundles", at, translate_s)


# -- measuring ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB from /proc/<pid>/status."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out["VmRSS"], out["VmHWM"]


@dataclass
class PoolRun:
    engine: str
    size: int
    cold_start_s: float
    compile_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    throughput: float = 0.0
    loaded_latencies_ms: list[float] = field(default_factory=list)
    callers: int = 0
    rss_kb: list[tuple[int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cut_short: bool = False
    ran: Counter[str] = field(default_factory=Counter)


def criteria_defines(cat: Catalogue) -> dict[str, list[str]] | None:
    """The defines the service asks for (each trial's criteria), from the bundles' metadata."""
    if cat.mode != "trials":
        return None
    from cds.catalogue import Catalogue as TrialCatalogue
    from cds.paths import BUNDLES_DIR

    trials = TrialCatalogue.from_directory(BUNDLES_DIR).trials
    wanted = {t.library: [c.define for c in t.criteria] for t in trials}
    return {lib: wanted[lib] for lib in cat.evaluate if lib in wanted} or None


def timed_call(engine: Engine, bundle: dict[str, Any], cat: Catalogue, run: PoolRun,
               defines: dict[str, list[str]] | None) -> float:
    started = time.perf_counter()
    try:
        engine.evaluate(bundle, cat.evaluate, cat.at, defines=defines)
    except EngineError as exc:
        run.errors.append(str(exc).splitlines()[0][:160])
    return (time.perf_counter() - started) * 1000


def worker_cpu(engine: Engine, bundle: dict[str, Any], cat: Catalogue, run: PoolRun,
               defines: dict[str, list[str]] | None) -> None:
    """One call straight to a worker (the message Engine.evaluate sends), for its CPU figure."""
    message = {"op": "evaluate", "libraries": cat.evaluate, "executionDateTime": execution_time(cat.at),
               "bundle": trim_bundle(bundle, engine.requirements(cat.evaluate)),
               **({"defines": defines} if defines else {})}
    try:
        reply = engine.pool.request(message)
    except EngineError as exc:
        run.errors.append(str(exc).splitlines()[0][:160])
        return
    run.cpu_ms.append(float(reply["cpuMs"]))
    for kind, libs in (reply.get("ran") or {}).items():
        run.ran[kind] += len(libs)


def bench_pool(cat: Catalogue, engine_kind: str, size: int, args: argparse.Namespace,
               progress: Callable[[str], None]) -> PoolRun:
    command = ["node", str(Path(args.worker).resolve())] if args.worker else None
    defines = criteria_defines(cat)
    started = time.perf_counter()
    engine = Engine(cat.libraries, pool_size=size, timeout=args.timeout, command=command, engine=engine_kind).start()
    run = PoolRun(engine_kind, size, time.perf_counter() - started)
    info = engine.pool.load_info
    run.compile_ms = info.get("compileMs") if engine_kind == "compiled" else None
    try:
        # Steady state: V8 optimises each compiled closure only after it has run many times, so
        # a worker needs a few hundred patients before its figures settle (the service's do).
        warm_until = time.perf_counter() + args.warmup
        warm = 0
        while time.perf_counter() < warm_until and warm < 40 * len(cat.patients):
            timed_call(engine, cat.patients[warm % len(cat.patients)], cat, run, defines)
            warm += 1
        run.errors.clear()
        work = [b for _ in range(args.iterations) for b in cat.patients]
        progress(f"{engine_kind}, pool {size}: worker CPU and latency, up to {len(work)} calls "
                 f"or {args.budget:.0f} s each, one caller")
        deadline = time.perf_counter() + args.budget
        for bundle in work:
            worker_cpu(engine, bundle, cat, run, defines)
            if time.perf_counter() > deadline:
                run.cut_short = True
                break
        deadline = time.perf_counter() + args.budget
        for bundle in work:
            run.latencies_ms.append(timed_call(engine, bundle, cat, run, defines))
            if time.perf_counter() > deadline:
                run.cut_short = True
                break
        run.callers = args.callers or 2 * size
        progress(f"{engine_kind}, pool {size}: throughput, up to {len(work)} calls or {args.budget:.0f} s, "
                 f"{run.callers} callers")
        lock = threading.Lock()
        queue = iter(work)
        loaded: list[float] = []
        deadline = time.perf_counter() + args.budget

        def caller() -> None:
            while time.perf_counter() < deadline:
                with lock:
                    bundle = next(queue, None)
                if bundle is None:
                    return
                ms = timed_call(engine, bundle, cat, run, defines)
                with lock:
                    loaded.append(ms)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=caller) for _ in range(run.callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        run.throughput = len(loaded) / (time.perf_counter() - t0)
        run.loaded_latencies_ms = loaded
        run.cut_short = run.cut_short or len(loaded) < len(work)
        run.rss_kb = [memory_kb(pid) for pid in engine.pool.pids]
    finally:
        engine.close()
    return run


def profile(cat: Catalogue, engine_kind: str, path: Path, args: argparse.Namespace) -> None:
    """Run one worker under `node --cpu-prof` on the patients and write its profile to `path`."""
    work = path.parent / f".profile-{os.getpid()}"
    work.mkdir(exist_ok=True)
    command = ["node", "--cpu-prof", f"--cpu-prof-dir={work}", str(ENGINE_DIR / "worker.mjs")]
    defines = criteria_defines(cat)
    with Engine(cat.libraries, pool_size=1, timeout=args.timeout, command=command, engine=engine_kind) as engine:
        for _ in range(max(3, args.iterations)):
            for bundle in cat.patients:
                engine.evaluate(bundle, cat.evaluate, cat.at, defines=defines)
    time.sleep(0.5)
    written = sorted(work.glob("*.cpuprofile"))
    if written:
        written[-1].replace(path)
    for leftover in work.glob("*"):
        leftover.unlink()
    work.rmdir()
    print(f"profile of the {engine_kind} engine written to {path} (open it in Chrome DevTools or speedscope)")


# -- report ---------------------------------------------------------------------------------------


def _versions() -> str:
    def pkg(name: str) -> str:
        try:
            return json.loads((ENGINE_DIR / "node_modules" / name / "package.json").read_text())["version"]
        except OSError:
            return "?"

    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        node = "?"
    return f"node {node}, cql-execution {pkg('cql-execution')}, cql-exec-fhir {pkg('cql-exec-fhir')}"


def _ok(flag: bool) -> str:
    return "OK" if flag else "MISSED"


def _ratio(runs: dict[str, PoolRun], figure: Callable[[PoolRun], float]) -> str:
    if "reference" not in runs or "compiled" not in runs:
        return ""
    ref, comp = figure(runs["reference"]), figure(runs["compiled"])
    if not comp or not ref or math.isnan(ref) or math.isnan(comp):
        return ""
    return f"{comp / ref:.3f}"


def report(cat: Catalogue, runs: list[PoolRun], args: argparse.Namespace, load_before: float) -> None:
    sizes = [len(b.get("entry") or []) for b in cat.patients]
    reqs = elm.data_requirements(cat.evaluate, cat.libraries)
    trimmed = [len(trim_bundle(b, reqs)["entry"]) for b in cat.patients]
    defines = {n: len(elm.define_names(cat.libraries[n])) for n in cat.evaluate}
    asked = criteria_defines(cat)

    print()
    print(f"mode       {cat.mode}: {cat.note}")
    print(f"machine    {os.cpu_count()} CPUs, Python {platform.python_version()}, {_versions()}")
    print(f"libraries  {', '.join(f'{n} ({d} defines)' for n, d in defines.items())}")
    print(f"patients   {cat.patients_note}; resources per bundle {min(sizes)}-{max(sizes)} "
          f"(median {statistics.median(sizes):.0f}), after trimming median {statistics.median(trimmed):.0f}")
    print(f"evaluated  at {cat.at}; one Engine.evaluate call per patient runs all {len(cat.evaluate)} libraries"
          + (f", returning their {sum(len(v) for v in asked.values())} criteria defines" if asked else ""))
    print(f"load avg   {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1 min; other work on this machine "
          "slows every figure, CPU figures least)")
    if cat.translate_s is not None:
        print(f"translate  {cat.translate_s:.1f} s for FHIRHelpers + stand-ins (build time, not part of start)")
    for r in runs:
        if r.ran:
            print(f"ran        {r.engine}: " + ", ".join(f"{n} library evaluations on the {k} engine"
                                                    for k, n in sorted(r.ran.items())))
    print()
    engines = sorted({r.engine for r in runs}, key=["reference", "compiled"].index)
    for size in sorted({r.size for r in runs}):
        by = {r.engine: r for r in runs if r.size == size}
        rows: list[tuple[str, list[str], str]] = []

        def row(label: str, figure: Callable[[PoolRun], float], fmt: str, note: str = "", ratio: bool = True,
                by: dict[str, PoolRun] = by, rows: list[tuple[str, list[str], str]] = rows) -> None:
            values = []
            for e in engines:
                v = figure(by[e]) if e in by else float("nan")
                values.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
            rows.append((label, values, (_ratio(by, figure) if ratio else "") + (f"  {note}" if note else "")))

        row("cold start (spawn + load + compile + warm-up)", lambda r: r.cold_start_s, "{:.2f} s",
            f"target <= {TARGET_COLD_S:.0f} s "
            + " ".join(f"{e}:{_ok(by[e].cold_start_s <= TARGET_COLD_S)}" for e in by))
        row("  compile time at load (worker)",
            lambda r: r.compile_ms if r.compile_ms is not None else float("nan"), "{:.0f} ms", ratio=False)
        row("worker CPU per patient p50", lambda r: percentile(r.cpu_ms, 50), "{:.2f} ms")
        row("worker CPU per patient p95", lambda r: percentile(r.cpu_ms, 95), "{:.2f} ms",
            "target: compiled/reference <= 0.050 (20x less CPU)")
        row("patients/s per core (1000 / mean CPU)",
            lambda r: 1000 / statistics.mean(r.cpu_ms) if r.cpu_ms else float("nan"), "{:.0f}")
        row("Python API latency p50 (one caller)", lambda r: percentile(r.latencies_ms, 50), "{:.1f} ms")
        row("Python API latency p95", lambda r: percentile(r.latencies_ms, 95), "{:.1f} ms",
            f"target <= {TARGET_P95_MS:.0f} ms " + " ".join(
                f"{e}:{_ok(percentile(by[e].latencies_ms, 95) <= TARGET_P95_MS)}" for e in by))
        row("Python API latency p99", lambda r: percentile(r.latencies_ms, 99), "{:.1f} ms")
        row(f"throughput ({by[engines[0]].callers if engines[0] in by else '?'} callers)", lambda r: r.throughput,
            "{:.1f} /s")
        row("  latency under load p95", lambda r: percentile(r.loaded_latencies_ms, 95), "{:.1f} ms")
        row("worker memory VmRSS (max over workers)", lambda r: max((a for a, _ in r.rss_kb), default=0) / 1024,
            "{:.0f} MB")
        row("worker memory peak VmHWM", lambda r: max((b for _, b in r.rss_kb), default=0) / 1024, "{:.0f} MB")
        width = max(len(a) for a, _, _ in rows)
        vwidth = max(len(v) for _, vs, _ in rows for v in vs + engines)
        print(f"pool size {size}")
        print(f"{'figure':<{width}}  " + "  ".join(f"{e:>{vwidth}}" for e in engines) + "  compiled/reference  note")
        print(f"{'-' * width}  " + "  ".join("-" * vwidth for _ in engines) + "  " + "-" * 30)
        for a, vs, c in rows:
            print(f"{a:<{width}}  " + "  ".join(f"{v:>{vwidth}}" for v in vs) + f"  {c}")
        print()
    errors = [e for r in runs for e in r.errors]
    if errors:
        print(f"{len(errors)} calls failed; first: {errors[0]}")
    if any(r.cut_short for r in runs):
        print("(some runs reached their time budget before using every patient: raise --budget for more samples)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/evaluate.py",
        description=__doc__.split("\n\n")[0] + " See the module docstring for what is measured.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--patients", type=int, default=100, help="number of patient bundles (generated, or the "
                        "first N from fhir_bundles/patients in trials mode)")
    parser.add_argument("--iterations", type=int, default=2, help="passes over the patients, for the latency and "
                        "for each throughput run")
    parser.add_argument("--pool-sizes", default="1", help="comma-separated pool sizes to measure (each gets a cold "
                        "start, a one-caller latency run and a throughput run)")
    parser.add_argument("--engines", default="reference,compiled",
                        help="comma-separated engines to measure side by side (reference, compiled)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write a CPU profile (.cpuprofile) of the compiled engine's worker here")
    parser.add_argument("--callers", type=int, default=0, help="concurrent callers in throughput runs "
                        "(default: 2 x pool size)")
    parser.add_argument("--libraries", type=int, default=5, choices=range(1, len(STAND_INS) + 1),
                        help="number of stand-in libraries (stand-in mode)")
    parser.add_argument("--mode", choices=["auto", "stand-in", "trials"], default="auto",
                        help="auto: trial libraries when rules/elm has any, else stand-ins")
    parser.add_argument("--at", default=None, help="evaluation time (ISO, with offset); default: "
                        f"{STAND_IN_AT} for stand-ins, now for trials")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds at most for each latency or "
                        "throughput run (a run stops early when its calls are done)")
    parser.add_argument("--worker", default=None, help="a worker script to run instead of cds/engine/worker.mjs "
                        "(A/B of an engine change; keep it in cds/engine so that its imports resolve)")
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds of calls before measuring (a new worker's code is not yet optimised)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="per-call timeout in seconds (includes waiting for a free worker)")
    parser.add_argument("--seed", type=int, default=1, help="seed for generated patients")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.pool_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        parser.error("--pool-sizes needs positive integers")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or any(e not in ("reference", "compiled") for e in engines):
        parser.error("--engines takes reference and/or compiled")

    def progress(msg: str) -> None:
        print(f"... {msg}", file=sys.stderr, flush=True)

    began = time.perf_counter()
    load_before = os.getloadavg()[0]
    progress("preparing libraries and patients")
    cat = load_catalogue(args)
    runs = []
    for size in sizes:
        for engine_kind in engines:
            progress(f"{engine_kind}, pool {size}: cold start")
            try:
                runs.append(bench_pool(cat, engine_kind, size, args, progress))
            except EngineError as exc:
                print(f"the engine failed ({engine_kind}, {cat.mode} mode, pool size {size}): {exc}", file=sys.stderr)
                return 1
    report(cat, runs, args, load_before)
    if args.profile is not None:
        profile(cat, "compiled", args.profile, args)
    print(f"(bench ran {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
