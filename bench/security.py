"""Probe figures for the security issue: event-loop responsiveness while JWKS hosts hang, and the
largest patient record the rules evaluate within the hook budget (which sets the admission limits).

  1. `/healthz` latency (p50/p95/max) over HTTP while 10 trusted issuers' JWKS hosts accept
     connections and never answer, and 10 clients wait on them (each with a token of its issuer).
  2. The largest record: the likely-eligible adult of trial 000 padded with N extra Observations
     of the codes the rules retrieve (spread over the last two years), evaluated through the engine
     (screen + five trials) for growing N; prints the time per size and the largest N within
     `--budget` seconds. TRIAL_CDS_MAX_RESOURCES_PER_TYPE / _MAX_RECORD_RESOURCES defaults are set
     from this with a margin for a busy machine.

    .venv/bin/python bench/security.py
    .venv/bin/python bench/security.py --sizes 250,500,1000,2000,4000 --budget 10
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cds.app import create_app
from cds.catalogue import Catalogue
from cds.engine import Engine
from cds.engine.elm import data_requirements
from cds.paths import BUNDLES_DIR
from cds.ruleset import screen_library
from cds.settings import Settings
from cds.web.server import uvicorn_config
from tests.trials.test_000_criteria import fits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz_during_hanging_jwks(n_issuers: int, probes: int) -> dict[str, float]:
    import uvicorn

    hanging = []
    for _ in range(n_issuers):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # accepts (in the kernel), never answers
        hanging.append(sock)
    issuers = {f"https://iss{i}.example.org": f"http://127.0.0.1:{s.getsockname()[1]}/jwks.json"
               for i, s in enumerate(hanging)}
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(trusted_issuers=issuers, service_url=f"http://127.0.0.1:{port}",
                            db=Path(tmp) / "db.sqlite", pool_size=1)
        server = uvicorn.Server(uvicorn_config(create_app(settings), "127.0.0.1", port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        key = ec.generate_private_key(ec.SECP384R1())
        waiting: list[threading.Thread] = []
        statuses: list[int] = []

        def wait_on(iss: str) -> None:
            now = int(time.time())
            token = jwt.encode({"iss": iss, "aud": f"{base}/cds-services", "iat": now, "exp": now + 120,
                                "jti": str(uuid.uuid4())}, key, algorithm="ES384", headers={"kid": "k", "typ": "JWT"})
            statuses.append(requests.get(f"{base}/cds-services", headers={"Authorization": f"Bearer {token}"},
                                         timeout=60).status_code)

        # The start-up fetches fail first and are cached for the refresh interval (10 s): wait it out
        # so that the probe runs while fresh fetches hang.
        time.sleep(10.5)
        for iss in issuers:
            t = threading.Thread(target=wait_on, args=(iss,))
            t.start()
            waiting.append(t)
        time.sleep(0.2)
        latencies = []
        with requests.Session() as http:
            for _ in range(probes):
                started = time.perf_counter()
                http.get(f"{base}/healthz", timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
                time.sleep(0.02)
        busy = sum(t.is_alive() for t in waiting)
        for t in waiting:
            t.join()
        server.should_exit = True
        thread.join(timeout=30)
    for s in hanging:
        s.close()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies), "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
            "max_ms": latencies[-1], "callers_still_waiting_after_probes": busy,
            "statuses": {s: statuses.count(s) for s in set(statuses)}}  # type: ignore[dict-item]


def padded_record(n: int, at: datetime, codes: list[tuple[str, str]]) -> dict[str, Any]:
    pid = "bench-big"
    resources = fits(pid, at)
    for i in range(n):
        system, code = codes[i % len(codes)]
        when = at - timedelta(hours=1 + (i * 17) % (24 * 730))
        resources.append({"resourceType": "Observation", "id": f"{pid}-pad-{i}", "status": "final",
                          "code": {"coding": [{"system": system, "code": code}]},
                          "subject": {"reference": f"Patient/{pid}"},
                          "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
                          "valueQuantity": {"value": 1 + i % 7, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                            "code": "mg/dL"}})
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def largest_record(sizes: list[int], budget: float) -> list[tuple[int, float]]:
    catalogue = Catalogue.from_directory(BUNDLES_DIR)
    screen = screen_library(catalogue)
    libraries = catalogue.trial_libraries + ([screen] if screen else [])
    req = data_requirements(libraries, catalogue.libraries).get("Observation")
    codes = sorted({(c.system, c.code) for c in (req.codes if req and req.codes else [])}) or [("http://loinc.org", "2160-0")]
    at = datetime.now(UTC).replace(microsecond=0)
    out = []
    with Engine(catalogue.libraries, timeout=max(60.0, budget * 4)) as engine:
        engine.evaluate(padded_record(0, at, codes), libraries, at)  # warm
        for n in sizes:
            bundle = padded_record(n, at, codes)
            started = time.perf_counter()
            engine.evaluate(bundle, libraries, at)
            took = time.perf_counter() - started
            out.append((n, took))
            print(f"  {n:>6} extra Observations: {took:6.2f} s", flush=True)
            if took > budget:
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--issuers", type=int, default=10)
    p.add_argument("--probes", type=int, default=100)
    p.add_argument("--sizes", default="250,500,1000,2000,3000,4000,6000")
    p.add_argument("--budget", type=float, default=10.0, help="seconds (the service's CQL timeout is 10)")
    args = p.parse_args()
    print(f"1. /healthz while {args.issuers} JWKS hosts hang:")
    print("  ", healthz_during_hanging_jwks(args.issuers, args.probes))
    print(f"2. evaluation time by record size (screen + every trial), budget {args.budget:g} s:")
    rows = largest_record([int(x) for x in args.sizes.split(",")], args.budget)
    within = [n for n, t in rows if t <= args.budget]
    print(f"   largest record within the budget: {max(within) if within else 0} extra Observations")


if __name__ == "__main__":
    main()
