"""The public keys of each trusted CDS client, fetched from the JWKS URL configured for it.

Decisions (DESIGN, "Auth"):
- Keys come only from the JWKS URL configured per issuer (TRIAL_CDS_TRUSTED_ISSUERS). The
  token's `jku` header is never fetched: it is unsigned input, and following it let a forged
  token name the attacker's key set. The CDS Hooks spec lets a service hold the client's key
  URL by agreement, which is what the configuration is.
- The cache has one entry per configured issuer, created at start: no client input can add,
  fill or evict entries.
- A fetch happens on first use, or when a token names a `kid` the cached set lacks, at most
  once per `refresh_interval` per issuer (failures count too: negative caching). Concurrent
  callers share the one fetch in flight.
- Fetches run on a small dedicated thread pool, never on the event loop, with short timeouts
  and a size cap, through the hardened session (no redirects, no environment proxies).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jwt

from ..net.http import FetchFailed, fetch_json
from ..net.urls import HttpUrl, parse_http_url

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT = 3.0  # seconds per connect / read
FETCH_DEADLINE = 5.0  # seconds for the whole fetch


class JwksUnavailable(Exception):
    """The issuer's JWK Set could not be fetched (the message says why, for the log)."""


class KeyRefused(Exception):
    """No key of the issuer may check this signature (the message says why, for the log)."""


# The JWK `kty` a JWS `alg` needs, by the alg's family (RS/PS: RSA, ES: EC).
KEY_TYPE_OF_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC"}


def fetch_jwks(url: HttpUrl) -> dict[str, Any]:
    """GET a JWK Set through the hardened session, within FETCH_DEADLINE and MAX_JWKS_BYTES."""
    try:
        doc = fetch_json(str(url), max_bytes=MAX_JWKS_BYTES, timeout=FETCH_TIMEOUT,
                         deadline=time.monotonic() + FETCH_DEADLINE,
                         headers={"Accept": "application/jwk-set+json, application/json"})
    except FetchFailed as exc:
        raise JwksUnavailable(str(exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksUnavailable("not a JWK Set")
    return doc


@dataclass
class _Issuer:
    url: HttpUrl
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    attempted: float | None = None  # monotonic time of the last fetch attempt (success or not)
    loaded: bool = False
    error: str | None = None
    inflight: Future[None] | None = None


class IssuerKeys:
    """Per-issuer key cache with bounded, coalesced, off-loop refreshes."""

    def __init__(self, issuers: Mapping[str, HttpUrl], *, refresh_interval: float = 10.0,
                 fetch: Callable[[HttpUrl], dict[str, Any]] = fetch_jwks, wait: float = FETCH_DEADLINE + 1.0) -> None:
        self._issuers = {iss: _Issuer(url) for iss, url in issuers.items()}
        self.refresh_interval = refresh_interval
        self.wait = wait
        self._fetch = fetch
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(4, len(self._issuers))),
                                        thread_name_prefix="trial-cds-jwks")

    def __contains__(self, issuer: object) -> bool:
        return issuer in self._issuers

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def warm(self) -> None:
        """Start a fetch for every issuer (start-up); nobody waits for it."""
        for issuer in self._issuers:
            self._refresh(issuer)

    def status(self) -> dict[str, str]:
        """Per issuer: 'ok (n keys)' or why its keys are not available (for /readyz)."""
        with self._lock:
            return {iss: (f"ok ({len(e.keys)} keys)" if e.loaded else (e.error or "not fetched yet"))
                    for iss, e in self._issuers.items()}

    def cached(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        with self._lock:
            entry = self._issuers.get(issuer)
            return entry.keys.get(kid) if entry else None

    async def key(self, issuer: str, kid: str) -> jwt.PyJWK | None:
        """The issuer's key `kid`, refreshing the set when allowed; None when it has no such key.

        Raises JwksUnavailable when the set was needed but could not be fetched."""
        key = self.cached(issuer, kid)
        if key is not None:
            return key
        pending = self._refresh(issuer)
        if pending is None:  # refreshed recently (or failing): answer from the cache
            with self._lock:
                entry = self._issuers[issuer]
                if not entry.loaded and entry.error:
                    raise JwksUnavailable(entry.error)
            return None
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(pending)), timeout=self.wait)
        except TimeoutError:
            raise JwksUnavailable("the JWKS server did not answer in time") from None
        with self._lock:
            entry = self._issuers[issuer]
            if not entry.loaded and entry.error:
                raise JwksUnavailable(entry.error)
        return self.cached(issuer, kid)

    async def signing_key(self, issuer: str, kid: str, alg: str) -> jwt.PyJWK:
        """The issuer's key `kid`, fit for `alg`; KeyRefused (unavailable, unknown kid, wrong kind)."""
        try:
            key = await self.key(issuer, kid)
        except JwksUnavailable as exc:
            raise KeyRefused(f"JWK Set of issuer {issuer} unavailable: {exc}") from None
        if key is None:
            shown = kid if len(kid) <= 40 else kid[:37] + "..."
            raise KeyRefused(f"unknown kid {shown!r} for issuer {issuer}")
        if key.key_type != KEY_TYPE_OF_ALG.get(alg[:2]):
            raise KeyRefused(f"alg {alg} does not fit the {key.key_type} key")
        return key

    def _refresh(self, issuer: str) -> Future[None] | None:
        """The fetch in flight for `issuer`, a new one when the interval allows, else None."""
        with self._lock:
            entry = self._issuers.get(issuer)
            if entry is None:
                return None
            if entry.inflight is not None and not entry.inflight.done():
                return entry.inflight
            now = time.monotonic()
            if entry.attempted is not None and now - entry.attempted < self.refresh_interval:
                return None
            entry.attempted = now
            try:
                entry.inflight = self._pool.submit(self._load, issuer)
            except RuntimeError:  # pool shut down (service stopping)
                return None
            return entry.inflight

    def _load(self, issuer: str) -> None:
        entry = self._issuers[issuer]
        try:
            doc = self._fetch(entry.url)
        except JwksUnavailable as exc:
            log.warning("JWK Set of trusted issuer %s not fetched: %s", issuer, exc)
            with self._lock:
                entry.error = f"JWK Set not fetched: {exc}"
            return
        except Exception as exc:  # a fetch function must not kill the pool thread silently
            log.warning("JWK Set of trusted issuer %s not fetched: %s", issuer, exc.__class__.__name__)
            with self._lock:
                entry.error = f"JWK Set not fetched: {exc.__class__.__name__}"
            return
        keys: dict[str, jwt.PyJWK] = {}
        for raw in doc.get("keys", []):
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str) or not raw["kid"]:
                continue
            try:
                keys[raw["kid"]] = jwt.PyJWK(raw)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue
        with self._lock:
            entry.keys, entry.loaded, entry.error = keys, True, None


def issuer_urls(trusted: Mapping[str, str]) -> dict[str, HttpUrl]:
    """Parse the configured JWKS URLs (a bad one is a configuration error, raised at start)."""
    return {iss: parse_http_url(url) for iss, url in trusted.items()}
