"""Benchmark of population screening (`trial-cds screen`) end to end, printed.

    .venv/bin/python bench/screen.py                      # 100,000 patients, then 1 vs 2 cores
    .venv/bin/python bench/screen.py --patients 20000 --scaling-patients 5000

Steps, each timed on this machine:
  1. generate the population (`python -m cds.synthetic.population`, all cores);
  2. `trial-cds screen` on it with `--master local[*]`, as a user runs it (a fresh JVM, Spark's
     Python workers, one CQL engine per Python worker): wall time, patients/s overall and per
     core, engine time in the population gate vs in the trial rules (summed over workers), the
     peak resident memory of the whole process tree (JVM + Python workers + Node workers,
     sampled from /proc every 0.2 s), and the size of what was written;
  3. scaling: the same job on a smaller population with `local[1]` and `local[2]` (one and two
     executor cores).
The machine is shared: figures vary with what else runs; `os.getloadavg()` is printed beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AT = "2026-11-26T09:00:00Z"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


class TreeMemory:
    """Peak summed RSS of a process and all its descendants, and their CPU time, sampled."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak_kb = pid, every, 0
        self.cpu: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            seen, todo, total = set(), [self.pid], 0
            while todo:
                p = todo.pop()
                if p in seen:
                    continue
                seen.add(p)
                total += _rss_kb(p)
                self.cpu[p] = max(self.cpu.get(p, 0), _cpu_ticks(p))
                todo += _children(p)
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kb


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def generate(n: int, out: Path, sle_rate: float | None) -> float:
    cmd = [sys.executable, "-m", "cds.synthetic.population", "--patients", str(n), "--out", str(out), "--at", AT]
    if sle_rate is not None:
        cmd += ["--sle-rate", str(sle_rate)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - started


def screen(export: Path, out: Path, master: str) -> dict[str, Any]:
    cmd = [str(Path(sys.executable).with_name("trial-cds")), "screen", str(export), "--out", str(out), "--at", AT,
           "--master", master, "--quiet"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid)
    _, stderr = proc.communicate()
    wall = time.perf_counter() - started
    peak = memory.stop()
    cpu = sum(memory.cpu.values()) / os.sysconf("SC_CLK_TCK")
    if proc.returncode != 0:
        raise SystemExit(f"screen failed ({proc.returncode}):\n{stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {"wall": wall, "cpu": cpu, "peak_mb": peak / 1024, "run": run, "summary": summary,
            "bytes": du(out), "parquet": du(out / "results.parquet")}


def report(label: str, n: int, r: dict[str, Any], cores: int) -> None:
    run, s = r["run"], r["summary"]
    rate = n / r["wall"]
    print(f"\n== {label}: {n:,} patients, master {run['master']} ({run['defaultParallelism']} cores, "
          f"{run['partitions']} partitions), load average {os.getloadavg()[0]:.2f}")
    print(f"  end to end            {r['wall']:8.1f} s   ({rate:,.0f} patients/s, {rate / cores:,.0f} per core)")
    print(f"  CPU time (tree)       {r['cpu']:8.1f} s   ({n / r['cpu']:,.0f} patients per CPU-second: "
          "per-core throughput, less sensitive to other load than wall time)")
    sec = run["seconds"]
    print(f"  in the job            {sec['total']:8.1f} s   (read+group+evaluate {sec['evaluate']:.1f}, "
          f"summarise {sec['summarise']:.1f}, write {sec['write']:.1f}); the rest is JVM/Spark start")
    gate, trials = run["engineSeconds"]["gate"], run["engineSeconds"]["trials"]
    pop = s["patients"]["inPopulation"]
    print(f"  engine time (summed)  gate {gate:.1f} s over {s['patients']['screened']:,} patients "
          f"({1000 * gate / max(1, s['patients']['screened']):.2f} ms each); trials {trials:.1f} s over {pop:,} "
          f"in the population ({1000 * trials / max(1, pop):.0f} ms each)")
    print(f"  peak memory (tree)    {r['peak_mb']:8.0f} MB")
    print(f"  output                {r['bytes'] / 1e6:8.2f} MB   (results.parquet {r['parquet'] / 1e6:.2f} MB, "
          f"input {run['inputBytes'] / 1e6:.0f} MB)")
    likely = sum(v["likely-eligible"] for v in s["verdicts"].values())
    possibly = sum(v["possibly-eligible"] for v in s["verdicts"].values())
    print(f"  verdicts              {likely:,} likely, {possibly:,} possibly eligible (patient x trial)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000, help="population of the main run (0: skip it)")
    parser.add_argument("--scaling-patients", type=int, default=20_000,
                        help="population of the 1 vs 2 core runs (0: skip)")
    parser.add_argument("--sle-rate", type=float, default=None, help="default: the generator's")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-screen-"))
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    print(f"bench/screen.py: {cores} cores, Python {sys.version.split()[0]}, work dir {work}")
    try:
        if args.patients:
            export = work / "export"
            seconds = generate(args.patients, export, args.sle_rate)
            print(f"generated {args.patients:,} patients ({du(export) / 1e6:.0f} MB of ndjson) in {seconds:.1f} s")
            report("local[*]", args.patients, screen(export, work / "out", "local[*]"), cores)
        if args.scaling_patients:
            small = work / "export-small"
            generate(args.scaling_patients, small, args.sle_rate)
            walls = {}
            for k in (1, 2):
                r = screen(small, work / f"out-{k}", f"local[{k}]")
                report(f"scaling, local[{k}]", args.scaling_patients, r, k)
                walls[k] = r
            j1, j2 = walls[1]["run"]["seconds"]["total"], walls[2]["run"]["seconds"]["total"]
            print(f"\nscaling 1 -> 2 executor cores: job {j1:.1f} s -> {j2:.1f} s (x{j1 / j2:.2f}); "
                  f"end to end {walls[1]['wall']:.1f} s -> {walls[2]['wall']:.1f} s "
                  f"(x{walls[1]['wall'] / walls[2]['wall']:.2f})")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
