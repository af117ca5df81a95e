"""Who is calling the clinician view's evaluation endpoint: an OpenID Connect id_token check.

The app gets an id_token with its SMART launch (`openid fhirUser`): a JWT the EHR's authorization
server signs for this app (its `aud` is the app's client id). The app's own back end is what an
id_token is for, so the app sends it with each evaluation; the service checks its issuer against
TRIAL_CDS_SMART_ISSUERS, its signature against that issuer's published keys, the audience against
TRIAL_CDS_SMART_CLIENT_ID, and its expiry. The access token never leaves the browser for anything
but the FHIR server it was issued for.

Keys: the same per-issuer cache as the CDS client JWTs (cds.auth.jwks.IssuerKeys): one entry per
configured issuer, fetched off the event loop through the hardened session and the URL policy,
at most once per refresh interval, failures cached. The JWKS URL comes from the issuer's OpenID
discovery document (`jwks_uri`); only configured issuers are ever fetched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from ..auth.jwks import FETCH_DEADLINE, FETCH_TIMEOUT, IssuerKeys, JwksUnavailable, KeyRefused, fetch_jwks
from ..net.http import FetchFailed, fetch_json
from ..net.urls import HttpUrl, UnsafeUrl, parse_http_url

ALGORITHMS = ["RS256", "RS384", "ES256", "ES384", "PS256"]
MAX_DISCOVERY_BYTES = 256 * 1024


class IdTokenError(Exception):
    """The id_token is missing, malformed, from an unknown issuer, expired or badly signed (for the log)."""


@dataclass(frozen=True)
class Caller:
    issuer: str
    subject: str
    fhir_user: str | None


def fetch_oidc_jwks(discovery: HttpUrl) -> dict[str, Any]:
    """The issuer's JWK Set, found through its OpenID discovery document."""
    try:
        doc = fetch_json(str(discovery), max_bytes=MAX_DISCOVERY_BYTES, timeout=FETCH_TIMEOUT,
                         deadline=time.monotonic() + FETCH_DEADLINE, headers={"Accept": "application/json"})
    except FetchFailed as exc:
        raise JwksUnavailable(f"discovery: {exc}") from None
    try:
        jwks_uri = parse_http_url(doc["jwks_uri"])
    except (ValueError, KeyError, TypeError) as exc:  # UnsafeUrl is a ValueError
        why = str(exc) if isinstance(exc, UnsafeUrl) else exc.__class__.__name__
        raise JwksUnavailable(f"discovery has no usable jwks_uri ({why})") from None
    return fetch_jwks(jwks_uri)


class IdTokenVerifier:
    def __init__(self, issuers: list[str], client_id: str, *, leeway: float = 30.0) -> None:
        self._issuers = {i.rstrip("/") for i in issuers}
        self._client_id = client_id
        self.leeway = leeway
        self.keys = IssuerKeys({i: parse_http_url(f"{i}/.well-known/openid-configuration") for i in self._issuers},
                               fetch=fetch_oidc_jwks)

    @property
    def configured(self) -> bool:
        return bool(self._issuers)

    def close(self) -> None:
        self.keys.close()

    async def verify(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise IdTokenError("no 'Authorization: Bearer <id_token>'")
        token = token.strip()
        if len(token) > 16 * 1024:
            raise IdTokenError("id_token longer than 16 KB")
        try:
            header = jwt.get_unverified_header(token)
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise IdTokenError("the id_token is not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise IdTokenError(f"id_token algorithm {str(alg)[:16]!r} is not accepted")
        issuer = str(unverified.get("iss", "")).rstrip("/")
        if issuer not in self._issuers:
            raise IdTokenError("the id_token's issuer is not in TRIAL_CDS_SMART_ISSUERS")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise IdTokenError("the id_token has no usable kid")
        try:
            key = await self.keys.signing_key(issuer, kid, alg)
        except KeyRefused as exc:
            raise IdTokenError(f"id_token {exc}") from None
        try:
            claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[alg], audience=self._client_id,
                                                issuer=unverified["iss"], options={"require": ["exp", "iat", "sub"]},
                                                leeway=self.leeway)
        except jwt.ExpiredSignatureError:
            raise IdTokenError("the id_token has expired") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise IdTokenError(f"the id_token was refused ({exc.__class__.__name__}: {str(exc)[:100]})") from None
        return Caller(issuer=issuer, subject=str(claims["sub"]), fhir_user=claims.get("fhirUser"))
