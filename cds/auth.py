"""CDS Hooks 2.0 client authentication: a JWT signed by a trusted CDS client (PyJWT).

Checks, in order (spec v2.0.1 "Trusting CDS Clients"): a Bearer JWT; header `alg` is ES384 or
RS384 (never `none`, never HMAC, whose "secret" could be a public key); `kid` present; `iss`
on the allowlist; the key from that issuer's configured JWKS URL, or from `jku` only when
`jku` lies under that URL; signature; `aud` = the endpoint called; `exp` and `iat` with a small
leeway; `jti` not seen before while the token is alive (replay). Each failure names its reason
(logged and returned) and never the token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import requests

from .fhir.client import under

ALLOWED_ALGORITHMS = ("ES384", "RS384")
MAX_JWKS_URLS = 32
KEY_TYPE = {"ES384": "EC", "RS384": "RSA"}  # the JWK `kty` each accepted `alg` needs


class AuthError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fetch_jwks(url: str) -> dict[str, Any]:
    resp = requests.get(url, timeout=5, allow_redirects=False, headers={"Accept": "application/json"})
    resp.raise_for_status()
    doc = resp.json()
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK Set")
    return doc


class JwtVerifier:
    def __init__(
        self,
        trusted_issuers: Mapping[str, str],
        *,
        leeway: float = 30.0,
        refresh_interval: float = 10.0,
        fetch: Callable[[str], dict[str, Any]] = fetch_jwks,
    ) -> None:
        self.trusted = dict(trusted_issuers)
        self.leeway = leeway
        self.refresh_interval = refresh_interval
        self._fetch = fetch
        self._keys: dict[str, dict[str, jwt.PyJWK]] = {}
        self._fetched_at: dict[str, float] = {}
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- keys ---------------------------------------------------------------------------

    def _load(self, url: str) -> dict[str, jwt.PyJWK]:
        try:
            doc = self._fetch(url)
        except Exception as exc:  # network, HTTP or JSON: the reason is what matters to the caller
            raise AuthError(f"could not fetch the issuer's JWK Set ({exc.__class__.__name__})") from None
        keys = {}
        for raw in doc.get("keys", []):
            if not isinstance(raw, dict) or not raw.get("kid"):
                continue
            try:
                keys[str(raw["kid"])] = jwt.PyJWK(raw)
            except jwt.PyJWKError:
                continue
        with self._lock:
            self._keys[url] = keys
            self._fetched_at[url] = time.monotonic()
        return keys

    def _key(self, url: str, kid: str) -> jwt.PyJWK:
        with self._lock:
            if url not in self._keys and len(self._keys) >= MAX_JWKS_URLS:
                # jku may name any URL under an issuer's JWKS URL: bound what an unsigned
                # header can make the service fetch and keep.
                raise AuthError("too many distinct jku URLs; configure the issuer's JWKS URL instead")
            keys = self._keys.get(url)
            fetched = self._fetched_at.get(url, 0.0)
        if keys is None or (kid not in keys and time.monotonic() - fetched >= self.refresh_interval):
            keys = self._load(url)  # first use, or an unknown kid: the issuer may have rotated keys
        if kid not in keys:
            raise AuthError(f"unknown kid {kid!r} for this issuer")
        return keys[kid]

    # -- replay ---------------------------------------------------------------------------

    def _check_replay(self, issuer: str, jti: str, exp: float) -> None:
        now = time.time()
        key = f"{issuer}\x00{jti}"
        with self._lock:
            for k in [k for k, e in self._seen.items() if e + self.leeway < now]:
                del self._seen[k]
            if key in self._seen:
                raise AuthError("replayed token (jti already used)")
            self._seen[key] = exp

    # -- verify ---------------------------------------------------------------------------

    def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        if not self.trusted:
            raise AuthError("no trusted issuers are configured (TRIAL_CDS_TRUSTED_ISSUERS)")
        if not authorization:
            raise AuthError("missing Authorization header")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <JWT>'")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError(f"JWT algorithm {alg!r} is not accepted (ES384 or RS384)")
        if str(header.get("typ", "")).upper() != "JWT":
            raise AuthError("JWT header typ must be 'JWT' (CDS Hooks 2.0)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("JWT header has no kid")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self.trusted:
            raise AuthError("JWT issuer is not trusted")
        jwks_url = self.trusted[issuer]
        jku = header.get("jku")
        if jku is not None:
            if not isinstance(jku, str) or not under(jku, jwks_url):
                raise AuthError("jku is not under the issuer's allowlisted JWKS URL")
            jwks_url = jku
        key = self._key(jwks_url, kid)
        if key.key_type != KEY_TYPE[alg]:
            raise AuthError(f"JWT alg {alg} does not fit the {key.key_type} key {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("JWT issued in the future (iat)") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"JWT aud is not this endpoint ({audience})") from None
        except jwt.InvalidIssuerError:
            raise AuthError("JWT issuer mismatch") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"JWT lacks the {exc.claim} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("JWT signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"JWT rejected ({exc.__class__.__name__})") from None
        except (TypeError, ValueError) as exc:  # the crypto layer refusing the key: still the token's fault
            raise AuthError(f"JWT rejected ({exc.__class__.__name__})") from None
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise AuthError("JWT jti must be a non-empty string")
        self._check_replay(issuer, claims["jti"], float(claims["exp"]))
        return claims
