"""Feedback (spec "Feedback"): validated, stored durably, summarised per trial.

The durability test runs `trial-cds serve --insecure` as a real subprocess, posts feedback from
a thread and `kill -9`s the server mid-stream: every feedback acknowledged with 200 must be in
the SQLite file afterwards. Then the server restarts on the same file and `trial-cds feedback`
summarises per trial.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from cds.cli import app as cli
from cds.synthetic.ehr import prefetch_for

from .conftest import (
    CQL_HOOK_TIMEOUT,
    FEEDBACK_PATH,
    FIT,
    HOOK_PATH,
    STARTUP_TIMEOUT,
    HookCall,
    Service,
    bundle_of,
    fit_resources,
    free_port,
    hook_body,
    wait_for,
)

NOW_Z = "2026-11-26T09:00:00Z"
START = datetime(2026, 11, 26, 9, 0)


def _item(card: str, outcome: str = "overridden", **extra: Any) -> dict[str, Any]:
    return {"card": card, "outcome": outcome, "outcomeTimestamp": NOW_Z, **extra}


# -- in-process: validation and storage ------------------------------------------------------------


def test_feedback_is_stored_against_the_card_and_its_trial(service: Service, fit_by_prefetch: HookCall) -> None:
    card = fit_by_prefetch.doc["cards"][0]
    trial = card["extension"]["trial-cds"]["researchStudy"]
    accepted = _item(card["uuid"], "accepted", acceptedSuggestions=[{"id": card["suggestions"][0]["uuid"]}])
    overridden = _item(card["uuid"], overrideReason={
        "reason": {"system": "https://trial-cds.dev/override-reasons", "code": "patient-declined",
                   "display": "Patient declined"}, "userComment": "prefers standard therapy"})
    resp = service.client.post(FEEDBACK_PATH, json={"feedback": [accepted, overridden]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"stored": 2}
    summary = {s.trial: s for s in service.state.store.summary()}
    assert summary[trial].accepted >= 1 and summary[trial].overridden >= 1
    assert summary[trial].reasons.get("Patient declined", 0) >= 1


@pytest.mark.parametrize("body,cause", [
    ({"feedback": [_item("c1", "rejected")]}, r"outcome"),
    ({"feedback": [_item("c1", "accepted")]}, r"acceptedSuggestions"),
    ({"feedback": [_item("c1", "accepted", acceptedSuggestions=[])]}, r"acceptedSuggestions"),
    ({"feedback": [{**_item("c1"), "outcomeTimestamp": "yesterday"}]}, r"outcomeTimestamp"),
    ({"feedback": [{**_item("c1"), "outcomeTimestamp": "2026-11-26T09:00:00"}]}, r"UTC offset"),
    ({"feedback": [{**_item("c1"), "outcomeTimestamp": 1764147600}]}, r"outcomeTimestamp"),
    ({"feedback": [{"outcome": "overridden", "outcomeTimestamp": NOW_Z}]}, r"card"),
    ({"feedback": []}, r"feedback"),
    ({"feedback": {"card": "c1"}}, r"feedback"),
    ({}, r"feedback"),
    ([], r"JSON object"),
])
def test_invalid_feedback_is_refused_with_400(service: Service, body: Any, cause: str) -> None:
    import re

    before = service.state.store.feedback_count()
    resp = service.client.post(FEEDBACK_PATH, json=body)
    assert resp.status_code == 400, resp.text
    assert re.search(cause, resp.json()["error"]), resp.json()
    assert service.state.store.feedback_count() == before, "nothing stored from a refused request"


def test_feedback_is_answered_while_hooks_wait_for_cql(service: Service, fit_by_prefetch: HookCall) -> None:
    """Storage does not queue behind hook calls waiting for a CQL worker (their thread pool)."""
    from concurrent.futures import ThreadPoolExecutor

    body = fit_by_prefetch.body
    n = 12  # more than the default executor's threads on 2 cores (6): some wait in its queue
    with ThreadPoolExecutor(max_workers=n) as pool:
        hooks = [pool.submit(service.hook, {**body, "hookInstance": str(uuid.uuid4())}) for _ in range(n)]
        started = time.monotonic()
        resp = service.http.post(service.url(FEEDBACK_PATH), json={"feedback": [_item(body["hookInstance"])]},
                                 timeout=60)
        took = time.monotonic() - started
        in_flight = sum(not h.done() for h in hooks)
        results = [h.result()[0].status_code for h in hooks]
    assert resp.status_code == 200
    assert results == [200] * n
    # Queued behind the hooks it would have waited for about half of them to finish.
    assert in_flight >= n - 3, f"feedback answered only after {n - in_flight} of {n} hooks finished ({took:.2f} s)"


# -- a real server process: kill -9 and restart ------------------------------------------------------


def _command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("trial-cds")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "cds.cli"]
    return base + ["serve", "--insecure", "--port", str(port)]


class Served:
    def __init__(self, db: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TRIAL_CDS_DB": str(db), "TRIAL_CDS_POOL_SIZE": "1", "TRIAL_CDS_CQL_TIMEOUT": "120",
               "PYTHONUNBUFFERED": "1"}
        self.log = log.open("ab")
        self.proc = subprocess.Popen(_command(self.port), env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._ready, STARTUP_TIMEOUT, interval=0.2, what="trial-cds serve to be ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"trial-cds serve exited with {self.proc.returncode}")
        try:
            return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


@pytest.fixture
def served_db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "feedback.sqlite"


def test_feedback_survives_kill_9_and_restart(served_db: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    server = Served(served_db, log)
    workers = server.children()
    try:
        # Cards first, so feedback can be tied to trials.
        body = hook_body(FIT, prefetch=None)
        state_queries = _discovery_queries(server.url)
        body["prefetch"] = prefetch_for(bundle_of(fit_resources()), state_queries, FIT)
        resp = requests.post(f"{server.url}{HOOK_PATH}", json=body, timeout=CQL_HOOK_TIMEOUT)
        assert resp.status_code == 200, resp.text
        cards = resp.json()["cards"]
        assert cards
        trials = {c["uuid"]: c["extension"]["trial-cds"]["researchStudy"] for c in cards}

        acked: list[str] = []
        cut_off: list[str] = []  # the poster's request the kill interrupted
        enough = threading.Event()
        stop = threading.Event()

        def post_loop() -> None:
            http = requests.Session()
            i = 0
            while not stop.is_set():
                card = cards[i % len(cards)]
                # A unique outcomeTimestamp per item names it in the database.
                tag = (START + timedelta(milliseconds=i)).isoformat(timespec="milliseconds") + "Z"
                if i % 2:
                    item = _item(card["uuid"], "accepted", acceptedSuggestions=[{"id": card["suggestions"][0]["uuid"]}])
                else:
                    item = _item(card["uuid"], overrideReason={"userComment": f"n{i}", "reason": {
                        "system": "https://trial-cds.dev/override-reasons", "code": "not-a-candidate",
                        "display": "Not a candidate (clinical judgement)"}})
                item["outcomeTimestamp"] = tag
                try:
                    r = http.post(f"{server.url}{FEEDBACK_PATH}", json={"feedback": [item]}, timeout=10)
                except requests.RequestException as exc:
                    cut_off.append(exc.__class__.__name__)
                    return  # the server is gone
                if r.status_code == 200:
                    acked.append(tag)
                    if len(acked) >= 60:
                        enough.set()
                i += 1

        poster = threading.Thread(target=post_loop, daemon=True)
        poster.start()
        assert enough.wait(timeout=120), "feedback was being acknowledged"
        os.kill(server.proc.pid, signal.SIGKILL)  # mid-stream: the poster is still sending
        server.proc.wait(timeout=30)
        poster.join(timeout=30)
        stop.set()
        assert server.proc.returncode == -signal.SIGKILL
        assert len(acked) >= 60
        assert cut_off, "the kill landed while feedback was still being posted"
        # The CQL workers die with their parent (stdin closes); make sure, by their own ids.
        for pid in workers:
            try:
                wait_for(lambda pid=pid: _gone(pid), 15, what=f"worker {pid} to exit")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
                raise

        # Straight from the file the killed server left (WAL included): nothing acknowledged is lost.
        snapshot = tmp_path / "after-kill"
        snapshot.mkdir()
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{served_db}{suffix}")
            if src.exists():
                shutil.copy(src, snapshot / (served_db.name + suffix))
        con = sqlite3.connect(snapshot / served_db.name)
        stored = {row[0] for row in con.execute("SELECT outcome_timestamp FROM feedback")}
        rows = con.execute("SELECT card, trial FROM feedback").fetchall()
        con.close()
        missing = [t for t in acked if t not in stored]
        assert not missing, f"{len(missing)} acknowledged feedback rows were lost: {missing[:5]}"
        assert all(trials.get(card) == trial for card, trial in rows), "each row names its card's trial"
    finally:
        server.stop()

    # Restart on the same file: it opens cleanly, serves, and keeps everything.
    server = Served(served_db, log)
    try:
        r = requests.post(f"{server.url}{FEEDBACK_PATH}",
                          json={"feedback": [_item(cards[0]["uuid"], overrideReason={"userComment": "after-restart"})]},
                          timeout=30)
        assert r.status_code == 200
    finally:
        server.stop()

    result = CliRunner().invoke(cli, ["feedback", "--db", str(served_db)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    con = sqlite3.connect(served_db)
    per_trial = dict(con.execute("SELECT trial, COUNT(*) FROM feedback GROUP BY trial").fetchall())
    accepted = dict(con.execute("SELECT trial, COUNT(*) FROM feedback WHERE outcome='accepted' GROUP BY trial").fetchall())
    con.close()
    assert set(per_trial) == set(trials.values())
    lines = result.output.splitlines()
    for trial in per_trial:
        row = next((line for line in lines if trial in line), None)
        assert row is not None, result.output
        cells = [c.strip() for c in row.replace("│", "|").split("|") if c.strip()]
        shown, acc, over = int(cells[1]), int(cells[2]), int(cells[3])
        assert shown == 1
        assert acc == accepted.get(trial, 0)
        assert acc + over == per_trial[trial]
    assert "Not a candidate (clinical judgement)" in result.output


def _discovery_queries(url: str) -> list[Any]:
    """The prefetch templates as the EHR sees them (from discovery), as PrefetchQuery objects."""
    from cds.hooks.prefetch import PrefetchQuery

    services = requests.get(f"{url}/cds-services", timeout=30).json()["services"]
    templates = services[0]["prefetch"]
    types = {k: v.split("/")[0].split("?")[0] for k, v in templates.items()}
    return [PrefetchQuery(k, types[k], v) for k, v in templates.items()]
