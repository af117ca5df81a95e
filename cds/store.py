"""Durable feedback and audit (SQLite, WAL, synchronous=FULL).

Why these settings: a feedback POST answered 200 must survive a crash or `kill -9` of the
server a moment later. WAL with synchronous=FULL fsyncs the log on every commit, and every
write commits before the response is sent.

Replay: the (issuer, jti) of every accepted client JWT is kept until the token expires, so a
token replayed after a restart is still refused. These rows use their own connection with
synchronous=NORMAL: they survive a crash of the process (WAL), and a power cut can at worst
forget the last few, which expire within minutes anyway.

Privacy: the audit keeps a keyed hash (HMAC-SHA256) of the patient id, never the id itself
and never a token; the key is generated once per database and kept in it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    hook_instance TEXT NOT NULL,
    at TEXT NOT NULL,
    patient_hash TEXT,
    status INTEGER NOT NULL,
    verdicts TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    data_source TEXT,
    dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS card (
    uuid TEXT PRIMARY KEY,
    hook_instance TEXT NOT NULL,
    trial TEXT NOT NULL,
    verdict TEXT NOT NULL,
    shown_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    card TEXT NOT NULL,
    trial TEXT,
    outcome TEXT NOT NULL,
    accepted TEXT,
    reason_system TEXT,
    reason_code TEXT,
    reason_display TEXT,
    user_comment TEXT,
    outcome_timestamp TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_trial ON feedback(trial);
CREATE TABLE IF NOT EXISTS jti (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX IF NOT EXISTS jti_expires ON jti(expires);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class TrialFeedbackSummary:
    trial: str
    shown: int
    accepted: int
    overridden: int
    reasons: dict[str, int]


class Store:
    """One connection guarded by a lock: SQLite serialises writers anyway."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(audit)")}
            if "dropped" not in columns:  # a database written by an earlier version
                self._conn.execute("ALTER TABLE audit ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0")
            row = self._conn.execute("SELECT value FROM meta WHERE key='patient_hash_key'").fetchone()
            if row is None:
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('patient_hash_key', ?)", (secrets.token_hex(32),))
                row = self._conn.execute("SELECT value FROM meta WHERE key='patient_hash_key'").fetchone()
        self._key = bytes.fromhex(row[0])
        self._jti_conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        self._jti_conn.execute("PRAGMA synchronous=NORMAL")
        self._jti_lock = threading.Lock()
        self._jti_claims = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        with self._jti_lock:
            self._jti_conn.close()

    def claim_jti(self, issuer: str, jti: str, expires: float) -> bool:
        """True when (issuer, jti) was not seen (it is now recorded until `expires`); False on a replay."""
        now = time.time()
        with self._jti_lock:
            self._jti_claims += 1
            if self._jti_claims % 256 == 1:
                self._jti_conn.execute("DELETE FROM jti WHERE expires < ?", (now,))
            row = self._jti_conn.execute("SELECT expires FROM jti WHERE issuer=? AND jti=?", (issuer, jti)).fetchone()
            if row is not None and row[0] >= now:
                return False
            self._jti_conn.execute("INSERT OR REPLACE INTO jti (issuer, jti, expires) VALUES (?,?,?)",
                                   (issuer, jti, expires))
            return True

    def patient_hash(self, patient_id: str) -> str:
        return hmac.new(self._key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def record_hook(self, *, hook_instance: str, patient_id: str | None, status: int,
                    verdicts: dict[str, str], latency_ms: float, data_source: str | None,
                    cards: Sequence[tuple[str, str, str]] = (), dropped: int = 0) -> None:
        """One audit row per hook call, plus the cards shown (uuid, trial, verdict).

        `dropped` counts the resources left out of the record because they did not reference
        the context patient by a well-formed reference."""
        at = _now()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO audit (hook_instance, at, patient_hash, status, verdicts, latency_ms, data_source, "
                    "dropped) VALUES (?,?,?,?,?,?,?,?)",
                    (hook_instance, at, self.patient_hash(patient_id) if patient_id else None, status,
                     json.dumps(verdicts, sort_keys=True), latency_ms, data_source, dropped))
                self._conn.executemany(
                    "INSERT OR REPLACE INTO card (uuid, hook_instance, trial, verdict, shown_at) VALUES (?,?,?,?,?)",
                    [(u, hook_instance, t, v, at) for u, t, v in cards])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def card_trial(self, card_uuid: str) -> str | None:
        """The trial a shown card was about (the clinician view's opaque launch context), or None."""
        with self._lock:
            row = self._conn.execute("SELECT trial FROM card WHERE uuid=?", (card_uuid,)).fetchone()
        return str(row[0]) if row else None

    def record_feedback(self, items: Iterable[dict[str, Any]]) -> int:
        """Store feedback items (already validated); committed before this returns."""
        rows = []
        received = _now()
        with self._lock:
            for f in items:
                trial = self._conn.execute("SELECT trial FROM card WHERE uuid=?", (f["card"],)).fetchone()
                reason = (f.get("overrideReason") or {}).get("reason") or {}
                rows.append((received, f["card"], trial[0] if trial else None, f["outcome"],
                             json.dumps([s["id"] for s in f.get("acceptedSuggestions") or []]),
                             reason.get("system"), reason.get("code"), reason.get("display"),
                             (f.get("overrideReason") or {}).get("userComment"), f["outcomeTimestamp"]))
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO feedback (received_at, card, trial, outcome, accepted, reason_system, reason_code, "
                    "reason_display, user_comment, outcome_timestamp) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(rows)

    def feedback_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def audit_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.execute("SELECT hook_instance, at, patient_hash, status, verdicts, latency_ms, data_source, dropped "
                                     "FROM audit ORDER BY id")
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def summary(self) -> list[TrialFeedbackSummary]:
        with self._lock:
            shown = dict(self._conn.execute("SELECT trial, COUNT(*) FROM card GROUP BY trial").fetchall())
            rows = self._conn.execute("SELECT COALESCE(trial, '(unknown card)'), outcome, reason_display, reason_code FROM feedback").fetchall()
        out: dict[str, dict[str, Any]] = {t: {"accepted": 0, "overridden": 0, "reasons": {}} for t in shown}
        for trial, outcome, display, code in rows:
            s = out.setdefault(trial, {"accepted": 0, "overridden": 0, "reasons": {}})
            s[outcome] += 1
            if outcome == "overridden":
                why = display or code or "no reason given"
                s["reasons"][why] = s["reasons"].get(why, 0) + 1
        return [TrialFeedbackSummary(t, shown.get(t, 0), s["accepted"], s["overridden"], s["reasons"])
                for t, s in sorted(out.items())]
