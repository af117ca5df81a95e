"""Benchmark of the patient-view hook, end to end (request -> record -> CQL -> cards -> response).

Measures, on this machine, in two modes:
  - in-process: the FastAPI app called through httpx's ASGI transport (no sockets),
  - over HTTP: `trial-cds serve --insecure` as its own process on 127.0.0.1, called with httpx;
and in each mode:
  - latency p50/p95/p99 of patient-view with a complete prefetch, one client, for a
    likely-eligible adult (trial 000's "fits" patient) and for a patient without SLE (the
    screening library only: the service's overhead around the trial rules);
  - throughput (hooks/s) at 1, 8 and 32 concurrent clients for a fixed duration each, and
    the errors (anything but 200);
  - where the time goes, from the service's `Server-Timing` header: request JSON parsing,
    record assembly, CQL, card building, response serialisation.

Targets (issue 14, compiled engine): p95 <= 30 ms over HTTP with prefetch, >= 100 hooks/s,
0 errors. `--engine reference` (or `both`) runs the same with the reference engine
(TRIAL_CDS_ENGINE), for comparison.

    .venv/bin/python bench/hook.py                  # 30 s per throughput level and mode
    .venv/bin/python bench/hook.py --seconds 5      # a quick look
    .venv/bin/python bench/hook.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cds.app import SERVICE_ID, create_app
from cds.hooks.prefetch import PrefetchQuery
from cds.settings import Settings
from cds.synthetic import fhir as F
from cds.synthetic.ehr import prefetch_for
from tests.trials.test_000_criteria import fits

HOOK = f"/cds-services/{SERVICE_ID}"
TARGET_P95_MS = 30.0
TARGET_RATE = 100.0
PHASES = ("parse", "record", "cql", "cards", "serialize", "total")
TIMING = re.compile(r"([a-z]+);dur=([0-9.]+)")


# -- patients and bodies -------------------------------------------------------------------------


def likely_eligible(at: datetime) -> tuple[str, list[dict[str, Any]]]:
    return "bench-fit", fits("bench-fit", at)


def without_sle(at: datetime) -> tuple[str, list[dict[str, Any]]]:
    pid = "bench-nosle"
    return pid, [F.patient(pid, date(at.year - 52, 2, 3), "male", name="NoLupus"),
                 F.condition(pid, "SNOMEDCT", "44054006", date(2015, 6, 1), rid=f"{pid}-t2dm"),
                 F.observation(pid, "LOINC", "2160-0", at - timedelta(days=5), value=0.9, unit="mg/dL",
                               rid=f"{pid}-creat")]


class Body:
    """A hook body with a complete prefetch, encoded once; each call gets a fresh hookInstance."""

    MARK = "00000000-0000-4000-8000-000000000000"

    def __init__(self, pid: str, resources: list[dict[str, Any]], queries: list[PrefetchQuery]) -> None:
        bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
        doc = {"hook": "patient-view", "hookInstance": self.MARK, "context": {"patientId": pid, "userId": "Practitioner/b"},
               "prefetch": prefetch_for(bundle, queries, pid)}
        self.template = json.dumps(doc).encode()
        self.size = len(self.template)

    def next(self) -> bytes:
        return self.template.replace(self.MARK.encode(), str(uuid.uuid4()).encode(), 1)


def queries_from_discovery(doc: dict[str, Any]) -> list[PrefetchQuery]:
    templates = doc["services"][0]["prefetch"]
    return [PrefetchQuery(k, v.split("/")[0].split("?")[0], v) for k, v in templates.items()]


# -- measuring -------------------------------------------------------------------------------------


@dataclass
class Sample:
    ok: bool
    ms: float
    status: int | str
    timing: dict[str, float] = field(default_factory=dict)
    cards: int = 0


async def call(client: httpx.AsyncClient, body: Body) -> Sample:
    started = time.perf_counter()
    try:
        resp = await client.post(HOOK, content=body.next(), headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        return Sample(False, (time.perf_counter() - started) * 1000, exc.__class__.__name__)
    ms = (time.perf_counter() - started) * 1000
    if resp.status_code != 200:
        return Sample(False, ms, resp.status_code)
    timing = {k: float(v) for k, v in TIMING.findall(resp.headers.get("server-timing", ""))}
    return Sample(True, ms, 200, timing, len(resp.json()["cards"]))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def latency(client: httpx.AsyncClient, body: Body, seconds: float, max_calls: int) -> list[Sample]:
    out: list[Sample] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(out) < max_calls:
        out.append(await call(client, body))
    return out


async def throughput(client: httpx.AsyncClient, body: Body, clients: int, seconds: float) -> tuple[list[Sample], float]:
    """Completions within the window; calls still in flight at its end are drained, not counted."""
    done: list[Sample] = []
    started = time.monotonic()
    deadline = started + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            sample = await call(client, body)
            if time.monotonic() <= deadline:
                done.append(sample)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return done, seconds


# -- reporting ---------------------------------------------------------------------------------------


def line_latency(label: str, samples: list[Sample]) -> str:
    ms = [s.ms for s in samples if s.ok]
    errors = Counter(s.status for s in samples if not s.ok)
    return (f"  {label:<34} n={len(samples):<5} p50={pct(ms, 50):8.1f} ms  p95={pct(ms, 95):8.1f} ms  "
            f"p99={pct(ms, 99):8.1f} ms  errors={sum(errors.values())}{' ' + str(dict(errors)) if errors else ''}")


def line_phases(samples: list[Sample]) -> str:
    by: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        for k, v in s.timing.items():
            by[k].append(v)
    total = statistics.fmean(by["total"]) if by.get("total") else float("nan")
    parts = []
    for phase in PHASES:
        if by.get(phase):
            mean = statistics.fmean(by[phase])
            share = f" ({100 * mean / total:4.1f}%)" if phase != "total" and total == total and total > 0 else ""
            parts.append(f"{phase} {mean:.1f}{share}")
    return "    server-side mean ms: " + ", ".join(parts) if parts else "    (no Server-Timing)"


async def run_mode(name: str, client: httpx.AsyncClient, bodies: dict[str, Body], args: argparse.Namespace) -> dict[str, Any]:
    print(f"\n== {name} ==")
    for _ in range(args.warmup):  # JIT and caches, not measured
        await call(client, bodies["likely-eligible"])
    result: dict[str, Any] = {}
    for label, body in bodies.items():
        samples = await latency(client, body, args.seconds, args.max_calls)
        print(line_latency(f"latency, {label} ({body.size // 1024} KB)", samples))
        print(line_phases(samples))
        result[label] = samples
    rates = {}
    for clients in args.clients:
        samples, seconds = await throughput(client, bodies["likely-eligible"], clients, args.seconds)
        ok = sum(s.ok for s in samples)
        errors = Counter(s.status for s in samples if not s.ok)
        rates[clients] = ok / seconds
        ms = [s.ms for s in samples if s.ok]
        print(f"  throughput, {clients:>2} clients: {ok / seconds:7.2f} hooks/s  ({ok} in {seconds:.0f} s, "
              f"p95 {pct(ms, 95):.0f} ms, errors={sum(errors.values())}{' ' + str(dict(errors)) if errors else ''})")
        result[f"errors@{clients}"] = sum(errors.values())
    result["rates"] = rates
    return result


# -- the two modes --------------------------------------------------------------------------------------


def settings_for(args: argparse.Namespace, db: Path) -> Settings:
    return Settings(insecure=True, db=db, cql_timeout=args.cql_timeout, pool_size=args.pool_size)


async def in_process(args: argparse.Namespace, db: Path, at: datetime) -> dict[str, Any]:
    app = create_app(settings_for(args, db))
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        print(f"in-process app ready in {time.perf_counter() - started:.1f} s")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=args.cql_timeout + 30) as client:
            queries = queries_from_discovery((await client.get("/cds-services")).json())
            bodies = {"likely-eligible": Body(*likely_eligible(at), queries), "no SLE (screen only)": Body(*without_sle(at), queries)}
            return await run_mode("in-process (httpx ASGI transport)", client, bodies, args)


async def over_http(args: argparse.Namespace, db: Path, at: datetime) -> dict[str, Any]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("trial-cds")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "cds.cli"]) + ["serve", "--insecure", "--port", str(port)]
    env = {**os.environ, "TRIAL_CDS_DB": str(db), "TRIAL_CDS_CQL_TIMEOUT": str(args.cql_timeout)}
    if args.pool_size:
        env["TRIAL_CDS_POOL_SIZE"] = str(args.pool_size)
    log = open(db.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in the finally below, after the server
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        limits = httpx.Limits(max_connections=max(args.clients) + 4, max_keepalive_connections=max(args.clients) + 4)
        async with httpx.AsyncClient(base_url=base, timeout=args.cql_timeout + 30, limits=limits, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"trial-cds serve exited ({proc.returncode}); see {log.name}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            print(f"\nserver process ready in {time.perf_counter() - started:.1f} s (pid {proc.pid}, {base})")
            queries = queries_from_discovery((await client.get("/cds-services")).json())
            bodies = {"likely-eligible": Body(*likely_eligible(at), queries), "no SLE (screen only)": Body(*without_sle(at), queries)}
            return await run_mode("over HTTP (separate server process, localhost)", client, bodies, args)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="duration of each latency and throughput run (default 30)")
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                   help="concurrency levels, comma-separated (default 1,8,32)")
    p.add_argument("--max-calls", type=int, default=2000, help="cap on calls in a latency run")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured calls first")
    p.add_argument("--mode", choices=["both", "inproc", "http"], default="both")
    p.add_argument("--pool-size", type=int, default=None, help="CQL workers (default: the service's default)")
    p.add_argument("--cql-timeout", type=float, default=60.0, help="seconds per CQL evaluation (service default 10)")
    p.add_argument("--engine", choices=["compiled", "reference", "both"], default="compiled",
                   help="the CQL engine the service runs (TRIAL_CDS_ENGINE); both: one after the other")
    args = p.parse_args(argv)

    at = datetime.now(UTC)
    print(f"bench/hook.py: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.seconds:g} s per run, "
          f"clients {args.clients}, pool size {args.pool_size or 'default'}")
    ok = True
    summary: list[str] = []
    for engine in (["reference", "compiled"] if args.engine == "both" else [args.engine]):
        os.environ["TRIAL_CDS_ENGINE"] = engine  # read by the service's worker pool (in process and over HTTP)
        print(f"\n######## {engine} engine")
        results: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="bench-hook-") as tmp:
            if args.mode in ("both", "inproc"):
                results["inproc"] = asyncio.run(in_process(args, Path(tmp) / "inproc.sqlite", at))
            if args.mode in ("both", "http"):
                results["http"] = asyncio.run(over_http(args, Path(tmp) / "http.sqlite", at))
        strict = engine == "compiled"  # the targets are the compiled engine's
        if "http" in results:
            ms = [s.ms for s in results["http"]["likely-eligible"] if s.ok]
            p95 = pct(ms, 95)
            good = p95 <= TARGET_P95_MS
            ok &= good or not strict
            summary.append(f"  {engine}: p95 over HTTP with prefetch: {p95:.1f} ms (target <= {TARGET_P95_MS:.0f}) "
                           f"{'PASS' if good else 'FAIL'}")
        for mode, r in results.items():
            best = max(r["rates"].values()) if r["rates"] else 0.0
            good = best >= TARGET_RATE
            errors = sum(v for k, v in r.items() if k.startswith("errors@"))
            ok &= (good or not strict) and errors == 0
            summary.append(f"  {engine}, {mode}: best throughput {best:.2f} hooks/s (target >= {TARGET_RATE:.0f}) "
                           f"{'PASS' if good else 'FAIL'}; errors {errors} {'PASS' if errors == 0 else 'FAIL'}")
    print("\n== targets ==")
    print("\n".join(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
