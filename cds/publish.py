"""Publish the trial catalogue (and optionally the synthetic patients) to a FHIR server.

    plan = load_sources(bundles_dir, trial=None, patients=True)   # local checks, nothing sent
    report = Publisher(base_url, token).publish(plan, dry_run=False, progress=callback)

Idempotent by construction: every resource goes up as `PUT Type/id` with its stable id. To say
what changed, and so that publishing twice bumps no versions, the current copy of every resource
is read first (batch of GETs) and compared with ours ignoring `meta` and `text`; resources that
are unchanged are not sent at all.

Writes are transactions of at most MAX_ENTRIES entries (Medplum refuses more than 50 updates in
one; HAPI is slow with big ones). Resources keep their bundle's order (a trial's bundle is in
dependency order: Libraries, Organizations, Locations, Group, ResearchStudy; a patient's record
starts with its Patient), a source is kept in one transaction when it fits, and publishing stops
at the first failed transaction: the server keeps the transactions already committed and nothing
of the failed one (a transaction is all-or-nothing on the server).

Patient bundles are `collection` Bundles: each entry becomes a `PUT Type/id`; references to an
entry's `urn:uuid:` fullUrl are rewritten to `Type/id`.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .net.http import new_session, retry_after
from .net.urls import UnsafeUrl, parse_http_url

MAX_ENTRIES = 50
RETRY_STATUSES = {429, 503}
MAX_TRIES = 5
MAX_WAIT = 30.0
TIMEOUT = 120.0
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
TYPE_RE = re.compile(r"^[A-Z][A-Za-z]+\Z")

Resource = dict[str, Any]
Progress = Callable[[int, str], None]

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


class PublishError(RuntimeError):
    """A source bundle is unusable, or the server could not be talked to."""


@dataclass
class Source:
    """One bundle file's resources, in the order they must be written."""

    name: str
    resources: list[Resource]


@dataclass
class EntryError:
    key: str  # "Type/id", or "" for an error about the whole transaction
    message: str


@dataclass
class TransactionFailure:
    index: int  # 1-based number of the transaction that failed
    status: int | None
    keys: list[str]
    errors: list[EntryError]


@dataclass
class Report:
    actions: dict[str, str] = field(default_factory=dict)  # "Type/id" -> created/updated/unchanged
    transactions: int = 0  # committed (or, in a dry run, that would be sent)
    failure: TransactionFailure | None = None
    not_written: list[str] = field(default_factory=list)  # after a failure: what was not sent or rolled back
    dry_run: bool = False

    def counts(self) -> dict[str, Counter[str]]:
        """resourceType -> Counter(created=, updated=, unchanged=)."""
        out: dict[str, Counter[str]] = {}
        for key, action in self.actions.items():
            out.setdefault(key.split("/", 1)[0], Counter())[action] += 1
        return out


# -- reading the sources ------------------------------------------------------------------------

def _key(resource: Resource) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _rewrite(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (refs.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, refs)) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, refs) for v in value]
    return value


def bundle_resources(doc: Any, name: str) -> list[Resource]:
    """The resources of a transaction/batch/collection Bundle, checked; PublishError says what is wrong."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise PublishError(f"{name}: not a FHIR Bundle")
    kind = doc.get("type")
    if kind not in ("transaction", "batch", "collection"):
        raise PublishError(f"{name}: Bundle.type is {kind!r}; expected transaction, batch or collection")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries:
        raise PublishError(f"{name}: the Bundle has no entries")
    problems: list[str] = []
    out: list[Resource] = []
    refs: dict[str, str] = {}
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{name}: Bundle.entry[{i}]"
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            problems.append(f"{where} has no resource")
            continue
        rtype, rid = res.get("resourceType"), res.get("id")
        if not isinstance(rtype, str) or not TYPE_RE.match(rtype):
            problems.append(f"{where}: resourceType missing or invalid ({rtype!r})")
            continue
        if not isinstance(rid, str) or not ID_RE.match(rid):
            problems.append(f"{where} ({rtype}): needs a stable, valid id to be published idempotently (got {rid!r})")
            continue
        key = f"{rtype}/{rid}"
        if kind != "collection":
            req = entry.get("request") if isinstance(entry.get("request"), dict) else {}
            if req.get("method") != "PUT" or req.get("url") != key:
                problems.append(f"{where} ({key}): request must be PUT {key} (got {req.get('method')} {req.get('url')})")
                continue
        if key in seen:
            problems.append(f"{where}: {key} appears twice")
            continue
        seen.add(key)
        full = entry.get("fullUrl")
        if isinstance(full, str) and full.startswith("urn:uuid:"):
            refs[full] = key
        out.append(res)
    if problems:
        raise PublishError("\n".join(problems))
    return [_rewrite(r, refs) for r in out] if refs else out


def read_bundle(path: Path) -> Source:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishError(f"no such file: {path}") from None
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path.name}: not readable JSON ({exc})") from None
    return Source(path.name, bundle_resources(doc, path.name))


def load_sources(bundles_dir: Path, *, trial: str | None = None, patients: bool = False) -> list[Source]:
    """The catalogue (or one trial's bundle), then each patient bundle; checked before anything is sent."""
    if trial:
        path = bundles_dir / f"{trial}.json"
        if not path.exists():
            known = sorted(p.stem for p in bundles_dir.glob("*.json") if p.name != "catalogue.json")
            raise PublishError(f"no bundle for trial {trial!r} in {bundles_dir} (known: {', '.join(known) or 'none'})")
        sources = [read_bundle(path)]
    else:
        sources = [read_bundle(bundles_dir / "catalogue.json")]
    if patients:
        files = sorted((bundles_dir / "patients").glob("*.json"))
        if not files:
            raise PublishError(f"no patient bundles in {bundles_dir / 'patients'}")
        sources += [read_bundle(p) for p in files]
    seen: dict[str, str] = {}
    for src in sources:
        for r in src.resources:
            if _key(r) in seen:
                raise PublishError(f"{_key(r)} is in both {seen[_key(r)]} and {src.name}")
            seen[_key(r)] = src.name
    return sources


# -- comparing --------------------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """Drop what servers drop or add: empty values (FHIR forbids them), meta, text."""
    if isinstance(value, dict):
        out = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_clean(x) for x in value) if v not in (None, "", [], {})]
    return value


def same_content(ours: Resource, theirs: Resource) -> bool:
    def strip(r: Resource) -> Any:
        return _clean({k: v for k, v in r.items() if k not in ("meta", "text")})

    return bool(strip(ours) == strip(theirs))


def chunks(sources: Iterable[list[Resource]], size: int = MAX_ENTRIES) -> Iterator[list[Resource]]:
    """Transactions of <= size entries, in order; a source stays in one transaction when it fits."""
    current: list[Resource] = []
    for resources in sources:
        if current and len(current) + len(resources) > size:
            yield current
            current = []
        for r in resources:
            if len(current) == size:
                yield current
                current = []
            current.append(r)
    if current:
        yield current


def _status(text: str | None) -> int | None:
    m = re.match(r"\s*(\d{3})", text or "")
    return int(m.group(1)) if m else None


def _issue_text(issue: dict[str, Any]) -> str:
    parts = [issue.get("details", {}).get("text") if isinstance(issue.get("details"), dict) else None,
             issue.get("diagnostics")]
    text = "; ".join(p for p in parts if isinstance(p, str) and p)
    where = ", ".join(e for e in issue.get("expression") or [] if isinstance(e, str))
    return f"{text or issue.get('code', 'error')}" + (f" (at {where})" if where else "")


def entry_errors(outcome: Any, keys: list[str]) -> list[EntryError]:
    """An OperationOutcome's issues, each attributed to the entry it names (by Type/id or Bundle.entry[n])."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if not isinstance(issues, list) or not issues:
        return [EntryError("", "the server gave no OperationOutcome")]
    out = []
    for issue in issues:
        if not isinstance(issue, dict) or issue.get("severity") not in ("error", "fatal", None):
            continue
        text = _issue_text(issue)
        blob = text + " " + " ".join(str(e) for e in issue.get("location") or [])
        key = ""
        m = re.search(r"Bundle\.entry\[(\d+)\]", blob)
        if m and int(m.group(1)) < len(keys):
            key = keys[int(m.group(1))]
        else:
            key = next((k for k in keys if re.search(rf"(?<![\w/-]){re.escape(k)}(?![\w.-])", blob)), "")
        if key:  # the key is shown beside the message; do not repeat it inside
            text = text.replace(f"{key}: ", "").replace(f"; {key} (", " (").replace(f"; {key}", "")
        out.append(EntryError(key, text))
    return out or [EntryError("", "the server refused the transaction")]


# -- talking to the server --------------------------------------------------------------------

def _wait(value: str | None, attempt: int) -> float:
    """The server's Retry-After (cds.net.http), else exponential backoff; never over MAX_WAIT."""
    asked = retry_after(value)
    return min(asked if asked is not None else 0.5 * 2 ** (attempt - 1), MAX_WAIT)


class Publisher:
    def __init__(self, base_url: str, token: str | None = None, *, session: requests.Session | None = None,
                 max_entries: int = MAX_ENTRIES, sleep: Callable[[float], None] = time.sleep) -> None:
        try:
            parsed = parse_http_url(base_url)
        except UnsafeUrl as exc:
            raise PublishError(f"FHIR base URL refused: {exc}") from None
        self.base = str(parsed).rstrip("/")
        self.session = session or new_session(pool_maxsize=4)
        self.session.headers.update({"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"})
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.max_entries = max(1, min(max_entries, MAX_ENTRIES))
        self.sleep = sleep
        self.retries = 0

    def _post(self, bundle: dict[str, Any]) -> requests.Response:
        body = json.dumps(bundle, ensure_ascii=False).encode("utf-8")
        for attempt in range(1, MAX_TRIES + 1):
            try:
                resp = self.session.post(self.base, data=body, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                raise PublishError(f"FHIR server unreachable at {self.base} ({exc.__class__.__name__}: {exc})") from None
            if resp.status_code in RETRY_STATUSES and attempt < MAX_TRIES:
                self.retries += 1
                self.sleep(_wait(resp.headers.get("Retry-After"), attempt))
                continue
            if resp.status_code in (401, 403):
                raise PublishError(f"FHIR server refused the request (HTTP {resp.status_code}): check --token / TRIAL_CDS_PUBLISH_TOKEN")
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(resp: requests.Response, what: str) -> dict[str, Any]:
        try:
            doc = resp.json()
        except ValueError:
            raise PublishError(f"{what}: HTTP {resp.status_code}, body is not JSON") from None
        if not isinstance(doc, dict):
            raise PublishError(f"{what}: HTTP {resp.status_code}, body is not a FHIR resource")
        return doc

    def current(self, keys: list[str], progress: Progress | None = None) -> dict[str, Resource | None]:
        """The server's copy of each resource (None when it has none), read in batches of GETs."""
        out: dict[str, Resource | None] = {}
        for start in range(0, len(keys), self.max_entries):
            part = keys[start:start + self.max_entries]
            bundle = {"resourceType": "Bundle", "type": "batch",
                      "entry": [{"request": {"method": "GET", "url": k}} for k in part]}
            resp = self._post(bundle)
            doc = self._json(resp, "reading current resources")
            if resp.status_code != 200 or doc.get("resourceType") != "Bundle":
                errors = "; ".join(e.message for e in entry_errors(doc, part))
                raise PublishError(f"reading current resources failed (HTTP {resp.status_code}): {errors}")
            entries = doc.get("entry") or []
            if len(entries) != len(part):
                raise PublishError(f"batch read answered {len(entries)} entries for {len(part)} requests")
            for key, entry in zip(part, entries, strict=True):
                status = _status((entry.get("response") or {}).get("status"))
                res = entry.get("resource")
                if status in (404, 410):
                    out[key] = None
                elif status == 200 and isinstance(res, dict) and _key(res) == key:
                    out[key] = res
                else:
                    detail = "; ".join(e.message for e in entry_errors((entry.get("response") or {}).get("outcome") or res, [key]))
                    raise PublishError(f"reading {key} failed (status {status}): {detail}")
            if progress:
                progress(len(part), "comparing with the server")
        return out

    def publish(self, sources: list[Source], *, dry_run: bool = False, progress: Progress | None = None) -> Report:
        report = Report(dry_run=dry_run)
        keys = [_key(r) for s in sources for r in s.resources]
        existing = self.current(keys, progress)
        to_write: list[list[Resource]] = []
        for src in sources:
            changed = []
            for r in src.resources:
                old = existing[_key(r)]
                if old is None:
                    report.actions[_key(r)] = CREATED
                elif same_content(r, old):
                    report.actions[_key(r)] = UNCHANGED
                else:
                    report.actions[_key(r)] = UPDATED
                if report.actions[_key(r)] != UNCHANGED:
                    changed.append(r)
            if changed:
                to_write.append(changed)
        unchanged = sum(1 for a in report.actions.values() if a == UNCHANGED)
        if progress and unchanged:
            progress(unchanged, "unchanged resources skipped")
        for n, chunk in enumerate(chunks(to_write, self.max_entries), start=1):
            if dry_run:
                report.transactions += 1
                if progress:
                    progress(len(chunk), "dry run: nothing written")
                continue
            failure = self._transaction(n, chunk)
            if failure is not None:
                report.failure = failure
                report.not_written = [k for k in keys[keys.index(failure.keys[0]):]
                                      if report.actions.get(k) != UNCHANGED]
                for k in report.not_written:
                    del report.actions[k]
                return report
            report.transactions += 1
            if progress:
                progress(len(chunk), f"transaction {n} committed")
        return report

    def _transaction(self, n: int, chunk: list[Resource]) -> TransactionFailure | None:
        keys = [_key(r) for r in chunk]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"{self.base}/{k}", "resource": r, "request": {"method": "PUT", "url": k}}
            for k, r in zip(keys, chunk, strict=True)]}
        resp = self._post(bundle)
        doc = self._json(resp, f"transaction {n}")
        if resp.status_code >= 400 or doc.get("resourceType") == "OperationOutcome":
            return TransactionFailure(n, resp.status_code, keys, entry_errors(doc, keys))
        if doc.get("resourceType") != "Bundle" or len(doc.get("entry") or []) != len(keys):
            raise PublishError(f"transaction {n}: the server's answer is not a transaction-response for {len(keys)} entries")
        bad = []
        for key, entry in zip(keys, doc["entry"], strict=True):
            status = _status((entry.get("response") or {}).get("status"))
            if status is None or status >= 300:
                bad += entry_errors((entry.get("response") or {}).get("outcome") or {}, [key]) or [EntryError(key, f"status {status}")]
        if bad:  # a server answering a transaction with failed entries did not honour all-or-nothing
            return TransactionFailure(n, resp.status_code, keys, bad)
        return None

