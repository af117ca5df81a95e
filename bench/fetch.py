"""Benchmark: publishing to a FHIR server, and patient-view with fetch (no prefetch) vs prefetch.

Measures, on this machine, against the test FHIR server (Medplum's engine in Node,
tests/fhir_server; it requires a bearer token, as an EHR would):
  - publish time of the trial catalogue, and of N synthetic patients (cds.synthetic.patients
    random_patient, seeded), through cds.publish (the code behind `trial-cds publish`);
  - hook latency over HTTP (the service under uvicorn in this process, one client, sequential)
    p50/p95/mean for every patient, once with no prefetch (`fhirServer` + `fhirAuthorization`:
    the service searches the server) and once with a complete prefetch; plus the service's own
    record-assembly time (Server-Timing `record`), which is where the two paths differ.

    .venv/bin/python bench/fetch.py                 # publish 20 patients, hook 20 per path (~1 min here)
    .venv/bin/python bench/fetch.py --patients 50 --hooks 10   # a quick look
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cds.app import SERVICE_ID, create_app
from cds.paths import BUNDLES_DIR
from cds.publish import Publisher, Source, bundle_resources, load_sources
from cds.settings import Settings
from cds.synthetic.ehr import prefetch_for
from cds.synthetic.patients import random_patient
from tests.fhirserver import FhirTestServer
from tests.service.conftest import LiveServer

HOOK = f"/cds-services/{SERVICE_ID}"
TIMING = re.compile(r"([a-z]+);dur=([0-9.]+)")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def hook(http: requests.Session, url: str, pid: str, **extra: Any) -> tuple[float, float, int, int]:
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/bench", "patientId": pid}, **extra}
    started = time.perf_counter()
    resp = http.post(url, json=body, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    timings = dict(TIMING.findall(resp.headers.get("server-timing", "")))
    cards = len(resp.json().get("cards", [])) if resp.status_code == 200 else -1
    return elapsed, float(timings.get("record", "nan")), resp.status_code, cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200,
                        help="synthetic patients to publish (default 200: about 7,200 resources)")
    parser.add_argument("--hooks", type=int, default=5,
                        help="patients (the first N) hooked on each path (default 5: the test server's searches "
                             "scan every stored resource, so with 200 patients stored one fetch hook takes ~30 s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    token = "bench-" + uuid.uuid4().hex
    at = datetime.now(UTC).replace(microsecond=0)
    bundles = [random_patient(i, at, args.seed) for i in range(1, args.patients + 1)]
    ids = [next(e["resource"]["id"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient") for b in bundles]
    patient_sources = [Source(pid, bundle_resources(b, pid)) for pid, b in zip(ids, bundles, strict=True)]
    n_resources = sum(len(s.resources) for s in patient_sources)

    with FhirTestServer(token=token) as server, tempfile.TemporaryDirectory() as tmp:
        catalogue = load_sources(BUNDLES_DIR)
        t = time.perf_counter()
        report = Publisher(server.base_url, token).publish(catalogue)
        t_catalogue = time.perf_counter() - t
        assert report.failure is None, report.failure
        t = time.perf_counter()
        report = Publisher(server.base_url, token).publish(patient_sources)
        t_patients = time.perf_counter() - t
        assert report.failure is None, report.failure
        t = time.perf_counter()
        again = Publisher(server.base_url, token).publish(patient_sources)
        t_again = time.perf_counter() - t
        assert all(a == "unchanged" for a in again.actions.values())

        settings = Settings(insecure=True, db=Path(tmp) / "bench.sqlite", fhir_allowlist=[server.base_url],
                            cql_timeout=120.0, fetch_timeout=30.0, hook_budget=60.0)
        t = time.perf_counter()
        live = LiveServer(create_app(settings)).start()
        t_start = time.perf_counter() - t
        http = requests.Session()
        http.trust_env = False
        try:
            url = live.base_url + HOOK
            queries = live.app.state.cds.queries
            hook(http, url, ids[0])  # warm the connection and the workers (no data: no cards)
            results: dict[str, list[tuple[float, float, int, int]]] = {"fetch": [], "prefetch": []}
            t = time.perf_counter()
            hooked = ids[:max(1, args.hooks)]
            for pid in hooked:
                results["fetch"].append(hook(http, url, pid, fhirServer=server.base_url, fhirAuthorization={
                    "access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "user/*.read",
                    "subject": "bench"}))
            t_fetch = time.perf_counter() - t
            fhir_requests = len([r for r in server.requests() if r["method"] == "GET"])
            t = time.perf_counter()
            for pid, bundle in zip(hooked, bundles, strict=False):
                results["prefetch"].append(hook(http, url, pid, prefetch=prefetch_for(bundle, queries, pid)))
            t_prefetch = time.perf_counter() - t
        finally:
            http.close()
            live.stop()

    print(f"\nbench/fetch.py: {args.patients} synthetic patients ({n_resources} resources) published, the first "
          f"{len(results['fetch'])} hooked per path; test FHIR server (Medplum engine, bearer token required), "
          "one client, sequential\n")
    print(f"{'publish':<34} {'entries':>8} {'seconds':>9}")
    print(f"{'catalogue (5 trials)':<34} {sum(len(s.resources) for s in catalogue):>8} {t_catalogue:>9.2f}")
    print(f"{f'{args.patients} patients':<34} {n_resources:>8} {t_patients:>9.2f}")
    print(f"{f'{args.patients} patients again (unchanged)':<34} {n_resources:>8} {t_again:>9.2f}")
    print(f"{'service start (5 trials, workers)':<34} {'':>8} {t_start:>9.2f}")
    print()
    print(f"{'hook path':<10} {'calls':>6} {'errors':>6} {'cards':>6} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} "
          f"{'record p50':>10} {'record p95':>10} {'wall s':>7}")
    for name, wall in (("fetch", t_fetch), ("prefetch", t_prefetch)):
        rows = results[name]
        ok = [r for r in rows if r[2] == 200]
        lat = [r[0] for r in ok]
        rec = [r[1] for r in ok]
        print(f"{name:<10} {len(rows):>6} {len(rows) - len(ok):>6} {sum(r[3] for r in ok):>6} {pct(lat, 50):>8.1f} "
              f"{pct(lat, 95):>8.1f} {statistics.fmean(lat) if lat else float('nan'):>8.1f} "
              f"{pct(rec, 50):>10.1f} {pct(rec, 95):>10.1f} {wall:>7.1f}")
    n = len(results["fetch"])
    print(f"\nFHIR GETs by the fetch path: {fhir_requests} ({fhir_requests / max(1, n):.1f} per hook)")
    same = sum(1 for f, p in zip(results["fetch"], results["prefetch"], strict=True) if f[3] == p[3])
    print(f"same number of cards on both paths: {same}/{n} patients")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
