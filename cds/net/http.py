"""The hardened `requests` session every outbound call uses, bounded body reads, Retry-After.

Why one place: a bearer token or a JWKS fetch must never ride a redirect, pick up proxy or
.netrc credentials from the environment, share a cookie between users, or read an unbounded
body. These properties belong to the session, not to each caller.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

CHUNK_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    """The server sent more than the caller's cap."""


class BodyDeadline(Exception):
    """The server did not finish sending the body before the caller's deadline (or a read timed out)."""


class BodyBroken(Exception):
    """The body was cut off or corrupt."""


_session: requests.Session | None = None
_session_lock = threading.Lock()


def new_session(pool_maxsize: int = 32) -> requests.Session:
    """A session that sends only what the caller puts on each request."""
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_maxsize, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.trust_env = False  # no proxies or .netrc credentials picked up from the environment
    # No cookie jar: a shared session would otherwise carry one user's cookies into the next call.
    s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return s


def shared_session() -> requests.Session:
    """One pooled session per process (connections reused across hook calls)."""
    global _session
    with _session_lock:
        if _session is None:
            _session = new_session()
        return _session


def read_body(resp: requests.Response, *, max_bytes: int, deadline: float | None = None) -> bytes:
    """The whole body of a streamed response, within a size cap and a monotonic deadline.

    `timeout` bounds each socket read, not the response: a server trickling bytes would hold
    the caller for ever. `read1` returns what has arrived, so the deadline is checked between
    reads. Raises BodyTooLarge, BodyDeadline or BodyBroken.
    """
    body = bytearray()
    try:
        while True:
            chunk = resp.raw.read1(CHUNK_BYTES, decode_content=True)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > max_bytes:
                raise BodyTooLarge(f"more than {max_bytes} bytes")
            if deadline is not None and time.monotonic() >= deadline:
                raise BodyDeadline("deadline passed mid-body")
    except (urllib3.exceptions.ReadTimeoutError, requests.Timeout):
        raise BodyDeadline("a read timed out mid-body") from None
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError, OSError) as exc:
        raise BodyBroken(f"cut off or corrupt ({exc.__class__.__name__})") from None
    except urllib3.exceptions.HTTPError as exc:
        raise BodyBroken(f"unreadable ({exc.__class__.__name__})") from None


class FetchFailed(Exception):
    """A JSON document could not be had (the message says why, for the log; never a secret)."""


def fetch_json(url: str, *, max_bytes: int, timeout: float, deadline: float, headers: Mapping[str, str],
               method: str = "GET", body: Any = None, session: requests.Session | None = None) -> Any:
    """One JSON request through the hardened session: no redirects, per-read `timeout`, the whole
    body within `max_bytes` and the monotonic `deadline`, 200 only. Raises FetchFailed."""
    try:
        resp = (session or shared_session()).request(method, url, json=body, timeout=timeout, stream=True,
                                                     allow_redirects=False, headers=dict(headers))
    except requests.RequestException as exc:
        raise FetchFailed(f"unreachable ({exc.__class__.__name__})") from None
    try:
        if resp.status_code != 200:
            raise FetchFailed(f"HTTP {resp.status_code}")
        raw = read_body(resp, max_bytes=max_bytes, deadline=deadline)
    except (BodyTooLarge, BodyDeadline, BodyBroken) as exc:
        raise FetchFailed(f"body not read ({exc})") from None
    finally:
        resp.close()
    try:
        return json.loads(raw)
    except ValueError:
        raise FetchFailed("not JSON") from None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
