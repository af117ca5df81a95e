"""A synthetic population as a FHIR Bulk Data export (ndjson), for `trial-cds screen`.

    python -m cds.synthetic.population --patients 100000 --out export/ [--seed 0] [--at ISO]

Writes `<ResourceType>.<part>.ndjson` files (one resource type per file, as `$export` writes
them, one part per 10,000 patients) and `export-manifest.json` (the Bulk Data status
response's shape: `transactionTime`, `output[{type, url, count}]`, plus what was generated).

Proportions. The default population is a rheumatology-enriched export (a Group export of a
health system's rheumatology and nephrology patients): `--sle-rate 0.02` of the patients have
SLE; the general population's SLE prevalence is about 0.07 % (pass `--sle-rate 0.0007`). The
others carry the common diagnoses of such a panel (hypertension, type 2 diabetes, osteoarthritis,
rheumatoid arthritis, asthma, hypothyroidism, a few discoid or drug-induced lupus), routine labs
and medications. Among the SLE patients: every trial's fitting patient
(`cds.synthetic.trial_records`), the single-failure near-misses of `cds.synthetic.patients`
(too old or young, low activity, low LVEF or eGFR, HIV, pregnancy, lymphoma, prior CAR-T),
missing serology, stale labs, sparse records, and the coding of real EHRs: SNOMED CT and
ICD-10-CM side by side, SNOMED-only, ICD-10-CM-only, WHO ICD-10-only, SI units (creatinine in
umol/L, bilirubin in umol/L), results reported against a limit (`<20 IU/mL`), children,
absolute and versioned patient references, a few point-of-care results coded only in a local lab
catalogue. Lab values vary within +/-12 %. About 2 % of the
patients have died (Patient.deceasedDateTime), as in any EHR's export.

Deterministic: every patient comes from its own generator seeded by (seed, index), so the
same `--seed`, `--at` and `--patients` give the same bytes, however many processes write.
`--defects` adds what real exports also hold (a truncated line, resources whose subject is a
Group or a urn:uuid or missing, an unknown resource type, resources of a patient the export
has no Patient for); the manifest counts them so a
screening run can be checked against it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..fhir.systems import BASE
from . import fhir as F
from . import patients as P
from . import trial_records as T
from .trial_records import ago, born

Resource = dict[str, Any]
Builder = Callable[[str, datetime], list[Resource]]

PART_SIZE = 10_000
FHIR_BASE = BASE  # the export's server, as in the committed patients
DEFAULT_SLE_RATE = 0.02
DECEASED_RATE = 0.02

# Codes for the common diagnoses of the non-SLE majority. SNOMED CT / ICD-10-CM: hypertension and
# drug-induced lupus from shared/codes.md; the others from public code tables (VSAC-derived value
# sets and FHIR examples: type 2 diabetes 44054006 / E11.9, rheumatoid arthritis 69896004 / M06.9,
# osteoarthritis 396275006 / M19.90, asthma 195967001 / J45.909, hypothyroidism 40930008 / E03.9,
# discoid lupus erythematosus 200938002 / L93.0). They never decide a verdict here: none of these
# patients has SLE, so the catalogue's population gate excludes them before any trial rule runs.
COMMON_DIAGNOSES: list[tuple[str, str, str, str, str, float]] = [
    # name, SNOMED CT, ICD-10-CM, WHO ICD-10, display, share of the non-SLE patients
    ("hypertension", "38341003", "I10", "I10", "Hypertensive disorder", 0.30),
    ("type-2-diabetes", "44054006", "E11.9", "E11.9", "Type 2 diabetes mellitus", 0.12),
    ("osteoarthritis", "396275006", "M19.90", "M19.9", "Osteoarthritis", 0.18),
    ("rheumatoid-arthritis", "69896004", "M06.9", "M06.9", "Rheumatoid arthritis", 0.10),
    ("asthma", "195967001", "J45.909", "J45.9", "Asthma", 0.08),
    ("hypothyroidism", "40930008", "E03.9", "E03.9", "Hypothyroidism", 0.07),
    ("discoid-lupus", "200938002", "L93.0", "L93.0", "Discoid lupus erythematosus", 0.01),
    ("drug-induced-lupus", "201436003", "M32.0", "M32.0", "Drug-induced systemic lupus erythematosus", 0.003),
]
# RxNorm ingredients: methotrexate and hydroxychloroquine from codes.md; metformin 6809,
# lisinopril 29046, levothyroxine 10582, albuterol 435 (RxNorm ingredient table).
MEDICATION_FOR = {"hypertension": "29046", "type-2-diabetes": "6809", "rheumatoid-arthritis": "6851",
                  "hypothyroidism": "10582", "asthma": "435", "discoid-lupus": "5521"}
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
LOCAL_LAB = "https://lab.example.org/codes"  # a site's own lab catalogue (no LOINC mapping)

# SLE profiles and their weights among SLE patients (most people with SLE are not refractory
# and active at any one time: low activity and sparse records are the commonest).
SLE_PROFILES: list[tuple[str, float]] = [
    ("adult-fit", 10), ("adult-low-activity", 22), ("adult-sparse", 14), ("adult-missing-serology", 7),
    ("adult-stale-labs", 7), ("adult-si-creatinine", 5), ("adult-low-lvef", 2), ("adult-low-egfr", 3),
    ("adult-hiv", 1), ("adult-prior-cart", 1), ("adult-pregnant", 2), ("adult-lymphoma", 1), ("adult-older", 4),
    ("adolescent", 2), ("fits-000", 3), ("fits-002", 3), ("fits-003", 3), ("fits-004", 3), ("child-fit", 3),
    ("child-hbv", 1), ("child-isolated-antihbc", 1),
]


@dataclass(frozen=True)
class Options:
    patients: int
    at: datetime
    seed: int = 0
    sle_rate: float = DEFAULT_SLE_RATE
    defects: bool = False


# --------------------------------------------------------------------------------------------
# One patient.
# --------------------------------------------------------------------------------------------

def patient_id(seed: int, index: int) -> str:
    return f"pop{seed}-{index:07d}"


def _sle_builder(profile: str, rng: random.Random) -> Builder:
    age = round(rng.uniform(19.0, 64.5), 1)
    lvef = rng.choice([55, 58, 60, 62, 65, 68])
    adult: dict[str, dict[str, Any]] = {
        "adult-fit": {},
        "adult-low-activity": {"activity": "low"},
        "adult-missing-serology": {"serology": False},
        "adult-stale-labs": {"labs_days_ago": rng.choice([120, 182, 240])},
        "adult-si-creatinine": {"creatinine": round(rng.uniform(55, 95)), "creatinine_unit": "umol/L"},
        "adult-low-lvef": {"lvef": rng.choice([38, 44, 48])},
        "adult-low-egfr": {"creatinine": round(rng.uniform(2.3, 3.4), 2)},
        "adult-hiv": {"hiv_positive": True},
        "adult-prior-cart": {"prior_cart": True},
        "adult-pregnant": {"hcg_positive": True},
        "adult-lymphoma": {"lymphoma": True},
        "adult-older": {"age_years": round(rng.uniform(65.5, 84.0), 1)},
        "adolescent": {"age_years": round(rng.uniform(15.0, 17.8), 1)},
    }
    if profile in adult:
        options = {"age_years": age, "lvef": lvef, **adult[profile]}
        return P._adult(**options)
    fixed: dict[str, Builder] = {
        "fits-000": T.fits_000, "fits-002": T.fits_002, "fits-003": T.fits_003, "fits-004": T.fits_004,
        "child-fit": P.child_record, "child-hbv": P._child_chronic_hbv,
        "child-isolated-antihbc": P._child_isolated_antihbc,
    }
    if profile in fixed:
        return fixed[profile]
    if profile == "adult-sparse":
        return lambda pid, at: _sparse_sle(pid, at, rng)
    raise ValueError(profile)


def _sparse_sle(pid: str, at: datetime, rng: random.Random) -> list[Resource]:
    """SLE on the problem list, hydroxychloroquine, and a blood count and creatinine months old:
    the commonest record of a patient seen once or twice a year."""
    birth = born(at, rng.uniform(22, 70))
    onset = ago(at, rng.uniform(2, 20) * 365)
    labs = ago(at, rng.uniform(100, 400))
    female = rng.random() < 0.9
    out = [
        F.patient(pid, birth, "female" if female else "male", name="Sparse"),
        P._condition(pid, "sle", onset, ("SNOMEDCT", "55464009", "Systemic lupus erythematosus"),
                     ("ICD10CM", "M32.9", "Systemic lupus erythematosus, unspecified")),
        F.medication_statement(pid, "5521", onset + timedelta(days=10), None, dose_mg=200, status="active",
                               rid=f"{pid}-hcq"),
        P._lab(pid, "hb", "718-7", labs, round(rng.uniform(105, 140)), "g/L", high=150),
        P._lab(pid, "wbc", "6690-2", labs, round(rng.uniform(3.0, 8.0), 1), "10*9/L", high=9.5),
        P._lab(pid, "plt", "777-3", labs, round(rng.uniform(140, 320)), "10*9/L", high=350),
    ]
    out += P._renal_panel(pid, labs, birth, female, round(rng.uniform(0.6, 1.1), 2), "mg/dL")
    return out


def _recode_sle(resources: list[Resource], rng: random.Random) -> str:
    """Code the SLE diagnosis the way one EHR or another does; returns the style used."""
    style = rng.choices(["as-built", "snomed-only", "icd10cm-only", "who-icd10-only", "snomed-descendant", "text"],
                        weights=[40, 20, 15, 10, 10, 5])[0]
    for res in resources:
        codings = (res.get("code") or {}).get("coding") or [] if res["resourceType"] == "Condition" else []
        if not any(c.get("code") == "55464009" for c in codings):
            continue
        if style == "snomed-only":
            res["code"] = {"coding": [F.coding("SNOMEDCT", "55464009", "Systemic lupus erythematosus")]}
        elif style == "icd10cm-only":
            code = rng.choice(["M32.10", "M32.19", "M32.9"])
            res["code"] = {"coding": [F.coding("ICD10CM", code)], "text": "SLE"}
        elif style == "who-icd10-only":
            # WHO ICD-10 (2019) chapter XIII: M32.1 SLE with organ or system involvement, M32.9 SLE, unspecified.
            code, display = rng.choice([("M32.1", "Systemic lupus erythematosus with organ or system involvement"),
                                        ("M32.9", "Systemic lupus erythematosus, unspecified")])
            res["code"] = {"coding": [{"system": ICD10_WHO, "code": code, "display": display}]}
        elif style == "snomed-descendant":
            res["code"] = {"coding": [F.coding("SNOMEDCT", "239887007",
                                               "Systemic lupus erythematosus with organ/system involvement")]}
        elif style == "text":
            res["code"] = {"coding": [F.coding("ICD10CM", "M32.9", "Systemic lupus erythematosus, unspecified")],
                           "text": "Lupus (SLE), on HCQ"}
    return style


def _si_bilirubin(resources: list[Resource]) -> None:
    """Report total bilirubin in umol/L (LOINC 14631-6), as most labs outside the US do."""
    for res in resources:
        if res["resourceType"] != "Observation":
            continue
        coding = res["code"]["coding"][0]
        q = res.get("valueQuantity")
        if coding.get("code") == "1975-2" and q and q.get("unit") == "mg/dL":
            res["code"] = F.concept("LOINC", "14631-6")
            q.update({"value": round(q["value"] * 17.1, 1), "unit": "umol/L", "code": "umol/L"})
            for rr in res.get("referenceRange") or []:
                high = rr.get("high")
                if high:
                    high.update({"value": round(high["value"] * 17.1, 1), "unit": "umol/L", "code": "umol/L"})


def _encounters(pid: str, at: datetime, rng: random.Random, n: int) -> list[Resource]:
    """Ambulatory visits: the commonest resource of a real export, read by no rule."""
    out = []
    for k in range(n):
        when = ago(at, rng.uniform(1, 700))
        out.append({
            "resourceType": "Encounter", "id": f"{pid}-enc-{k}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB",
                      "display": "ambulatory"},
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": F.iso(when), "end": F.iso(when + timedelta(minutes=20))},
        })
    return out


def _other_patient(pid: str, at: datetime, rng: random.Random) -> list[Resource]:
    """A patient without SLE: age, the common diagnoses of the panel, routine labs and drugs."""
    child = rng.random() < 0.15
    years = rng.uniform(2, 17.9) if child else min(95.0, max(18.0, rng.gauss(54, 17)))
    birth = born(at, years)
    female = rng.random() < 0.62
    out: list[Resource] = [F.patient(pid, birth, "female" if female else "male", name="Panel")]
    style = rng.choices(["both", "snomed", "icd10cm", "who"], weights=[50, 25, 15, 10])[0]
    for name, sct, icd_cm, icd_who, display, share in COMMON_DIAGNOSES:
        if child and name not in ("asthma", "hypothyroidism"):
            continue
        if rng.random() >= share:
            continue
        onset = ago(at, rng.uniform(0.5, 15) * 365)
        codings = []
        if style in ("both", "snomed"):
            codings.append(F.coding("SNOMEDCT", sct, display))
        if style in ("both", "icd10cm"):
            codings.append(F.coding("ICD10CM", icd_cm))
        if style == "who":
            codings.append({"system": ICD10_WHO, "code": icd_who})
        cond = F.condition(pid, "SNOMEDCT", sct, onset, rid=f"{pid}-{name}")
        cond["code"] = {"coding": codings, "text": display}
        out.append(cond)
        if name in MEDICATION_FOR and rng.random() < 0.8:
            out.append(F.medication_request(pid, MEDICATION_FOR[name], onset + timedelta(days=14), None,
                                            rid=f"{pid}-{name}-rx"))
    if rng.random() < 0.65:  # a routine panel some time in the last two years
        labs = ago(at, rng.uniform(3, 730))
        if not child:
            creatinine = rng.uniform(0.55, 1.35)
            si = rng.random() < 0.2
            out += P._renal_panel(pid, labs, birth, female, round(creatinine * 88.4) if si else round(creatinine, 2),
                                  "umol/L" if si else "mg/dL")
        out += [
            P._lab(pid, "hb", "718-7", labs, round(rng.uniform(110, 165)), "g/L", high=160),
            P._lab(pid, "wbc", "6690-2", labs, round(rng.uniform(4.0, 10.5), 1), "10*9/L", high=11),
            P._lab(pid, "plt", "777-3", labs, round(rng.uniform(150, 400)), "10*9/L", high=450),
            P._lab(pid, "alt", "1742-6", labs, round(rng.uniform(10, 45)), "U/L", high=40),
        ]
    if rng.random() < 0.03:  # a point-of-care test in a local lab catalogue, no LOINC mapped
        res = F.observation(pid, LOCAL_LAB, "POC-GLU", ago(at, rng.uniform(3, 400)), value=round(rng.uniform(4, 9), 1),
                            unit="mmol/L", rid=f"{pid}-poc-glucose")
        res["code"]["coding"][0]["display"] = "Glucose, point of care"
        out.append(res)
    if rng.random() < 0.5:
        vitals = ago(at, rng.uniform(3, 400))
        weight = rng.uniform(12, 60) if child else rng.uniform(50, 110)
        out.append(P._lab(pid, "weight", "29463-7", vitals, round(weight, 1), "kg", category="vital-signs"))
    return out


def build(index: int, o: Options) -> tuple[str, list[Resource], str]:
    """(patient id, resources, profile) of the `index`-th patient; the same for the same seed."""
    rng = random.Random(f"trial-cds-population:{o.seed}:{index}")
    pid = patient_id(o.seed, index)
    F.reset_ids()
    if rng.random() < o.sle_rate:
        profile = rng.choices([p for p, _ in SLE_PROFILES], weights=[w for _, w in SLE_PROFILES])[0]
        resources = P._finalise(pid, _sle_builder(profile, rng)(pid, o.at))
        resources = P._jitter(resources, rng)
        style = _recode_sle(resources, rng)
        if rng.random() < 0.3:
            _si_bilirubin(resources)
        if rng.random() < 0.2:  # the commonest comorbidity of SLE
            onset = ago(o.at, rng.uniform(200, 3000))
            htn = P._condition(pid, "htn", onset, ("SNOMEDCT", "38341003", "Hypertensive disorder"),
                               ("ICD10CM", "I10", "Essential (primary) hypertension"))
            resources.append(P._finalise(pid, [htn])[0])
        profile = f"sle:{profile}:{style}"
    else:
        resources = P._finalise(pid, _other_patient(pid, o.at, rng))
        profile = "other"
    resources += _encounters(pid, o.at, rng, rng.randint(0, 3))
    _vary_references(pid, resources, rng)
    if rng.random() < DECEASED_RATE:  # an EHR keeps the records of patients who have died
        resources[0]["deceasedDateTime"] = F.iso(ago(o.at, rng.uniform(5, 900)))
        profile += ":deceased"
    return pid, resources, profile


def _vary_references(pid: str, resources: list[Resource], rng: random.Random) -> None:
    """Most references relative; some exports write them absolute or versioned (all well formed)."""
    form = rng.choices(["relative", "absolute", "versioned"], weights=[90, 7, 3])[0]
    if form == "relative":
        return
    ref = f"{FHIR_BASE}/Patient/{pid}" if form == "absolute" else f"Patient/{pid}/_history/1"
    for res in resources:
        for key in ("subject", "patient"):
            if isinstance(res.get(key), dict):
                res[key] = {"reference": ref}


# --------------------------------------------------------------------------------------------
# Defects a real export may hold (opt-in).
# --------------------------------------------------------------------------------------------

def defects(o: Options) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Lines to append, by resource type file, and how many of each kind."""
    k = max(1, o.patients // 1000)
    rng = random.Random(f"trial-cds-population-defects:{o.seed}")
    lines: dict[str, list[str]] = {"Observation": [], "Condition": []}
    counts = {"malformed": 0, "no-patient-reference": 0, "unknown-resource-type": 0, "no-patient-resource": 0}

    def obs(i: int, subject: Any) -> dict[str, Any]:
        res = F.observation("x", "LOINC", "718-7", ago(o.at, 10), value=120, unit="g/L", rid=f"defect-obs-{i}")
        if subject is None:
            res.pop("subject")
        else:
            res["subject"] = subject
        return res

    for i in range(k):
        good = json.dumps(obs(i, {"reference": f"Patient/{patient_id(o.seed, rng.randrange(o.patients))}"}))
        lines["Observation"].append(good[: len(good) // 2])  # truncated write
        counts["malformed"] += 1
        unusable = [{"reference": "Group/clinic-7"}, {"reference": f"urn:uuid:{rng.getrandbits(64):016x}"},
                    None, {"display": "J. Smith"}, {"reference": "Patient/"}]
        for j, subject in enumerate(unusable):
            lines["Observation"].append(json.dumps(obs(i * 10 + j, subject)))
            counts["no-patient-reference"] += 1
        lines["Observation"].append(json.dumps({"resourceType": "Observaton", "id": f"typo-{i}",
                                          "subject": {"reference": f"Patient/{patient_id(o.seed, 0)}"}}))
        counts["unknown-resource-type"] += 1
        orphan = f"not-exported-{i}"
        sle = F.condition(orphan, "SNOMEDCT", "55464009", ago(o.at, 900), rid=f"{orphan}-sle")
        lines["Condition"].append(json.dumps(sle))
        counts["no-patient-resource"] += 1
    return lines, counts


# --------------------------------------------------------------------------------------------
# Writing.
# --------------------------------------------------------------------------------------------

def _dump(res: Resource) -> str:
    return json.dumps(res, ensure_ascii=False, separators=(",", ":"))


def _write_part(args: tuple[int, Options, str]) -> dict[str, Any]:
    part, o, out = args
    start, stop = part * PART_SIZE, min(o.patients, (part + 1) * PART_SIZE)
    by_type: dict[str, list[str]] = {}
    profiles: dict[str, int] = {}
    for index in range(start, stop):
        _, resources, profile = build(index, o)
        parts = profile.split(":")
        kind = "other" if parts[0] == "other" else ":".join(parts[:2])
        profiles[kind] = profiles.get(kind, 0) + 1
        if parts[-1] == "deceased":
            profiles["deceased"] = profiles.get("deceased", 0) + 1
        style = parts[2] if parts[0] == "sle" else None
        if style:
            profiles[f"sle-coding:{style}"] = profiles.get(f"sle-coding:{style}", 0) + 1
        for res in resources:
            by_type.setdefault(res["resourceType"], []).append(_dump(res))
    counts = {}
    for rtype, lines in sorted(by_type.items()):
        Path(out, f"{rtype}.{part:03d}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
        counts[rtype] = len(lines)
    return {"part": part, "counts": counts, "profiles": profiles}


def _parts(n: int) -> Iterator[int]:
    return iter(range((n + PART_SIZE - 1) // PART_SIZE))


def write(out: Path, o: Options, *, processes: int | None = None) -> dict[str, Any]:
    """Write the export into `out` (existing ndjson files there are replaced); return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.ndjson"):
        old.unlink()
    jobs = [(part, o, str(out)) for part in _parts(o.patients)]
    workers = max(1, min(len(jobs), processes or os.cpu_count() or 1))
    if workers == 1:
        results = [_write_part(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_part, jobs))
    files: list[dict[str, Any]] = []
    profiles: dict[str, int] = {}
    for r in results:
        for rtype, count in r["counts"].items():
            files.append({"type": rtype, "url": f"{rtype}.{r['part']:03d}.ndjson", "count": count})
        for k, v in r["profiles"].items():
            profiles[k] = profiles.get(k, 0) + v
    injected: dict[str, int] = {}
    if o.defects:
        extra, injected = defects(o)
        for rtype, lines in extra.items():
            name = f"{rtype}.defects.ndjson"
            Path(out, name).write_text("\n".join(lines) + "\n", encoding="utf-8")
            files.append({"type": rtype, "url": name, "count": len(lines)})
    manifest = {
        "transactionTime": F.iso(o.at),
        "request": f"{FHIR_BASE}/Group/synthetic-population/$export",
        "requiresAccessToken": False,
        "output": sorted(files, key=lambda f: (f["type"], f["url"])),
        "error": [],
        "extension": {"https://trial-cds.dev/synthetic-population": {
            "patients": o.patients, "seed": o.seed, "sleRate": o.sle_rate, "at": F.iso(o.at),
            "profiles": dict(sorted(profiles.items())), "defects": injected}},
    }
    Path(out, "export-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _parse_at(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cds.synthetic.population",
                                     description="Write a synthetic population as FHIR Bulk Data ndjson.")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--at", default=F.iso(P.DEFAULT_AT),
                        help="date the records are current at (ISO 8601; screen with the same --at)")
    parser.add_argument("--sle-rate", type=float, default=DEFAULT_SLE_RATE,
                        help=f"share of patients with SLE (default {DEFAULT_SLE_RATE}: rheumatology-enriched)")
    parser.add_argument("--defects", action="store_true", help="add malformed and unattributable lines")
    parser.add_argument("--processes", type=int, default=None, help="writer processes (default: cores)")
    args = parser.parse_args(argv)
    if args.patients < 1:
        parser.error("--patients must be 1 or more")
    if not 0 <= args.sle_rate <= 1:
        parser.error("--sle-rate must be between 0 and 1")
    try:
        at = _parse_at(args.at)
    except ValueError:
        parser.error(f"--at is not an ISO date-time: {args.at}")
    started = time.perf_counter()
    manifest = write(args.out, Options(args.patients, at, args.seed, args.sle_rate, args.defects),
                     processes=args.processes)
    lines = sum(f["count"] for f in manifest["output"])
    print(f"{args.patients} patients, {lines} resources in {len(manifest['output'])} files written to {args.out} "
          f"in {time.perf_counter() - started:.1f} s; screen with --at {F.iso(at)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

