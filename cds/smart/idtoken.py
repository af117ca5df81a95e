"""Who is calling the clinician view's evaluation endpoint: an OpenID Connect id_token check.

The app gets an id_token with its SMART launch (`openid fhirUser`): a JWT the EHR's authorization
server signs for this app (its `aud` is the app's client id). The app's own back end is what an
id_token is for, so the app sends it with each evaluation; the service checks its signature
against the issuer's published keys, the issuer against TRIAL_CDS_SMART_ISSUERS, the audience
against TRIAL_CDS_SMART_CLIENT_ID, and its expiry. The access token never leaves the browser for
anything but the FHIR server it was issued for. Keys are found through the issuer's OpenID
discovery document; only configured issuers are ever fetched (no request goes to an address the
caller chose), and keys are cached (PyJWT's PyJWKClient, which refetches on an unknown `kid`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import jwt
import requests

ALGORITHMS = ["RS256", "RS384", "ES256", "ES384", "PS256"]


class IdTokenError(Exception):
    """The id_token is missing, malformed, from an unknown issuer, expired or badly signed."""


@dataclass(frozen=True)
class Caller:
    issuer: str
    subject: str
    fhir_user: str | None


class IdTokenVerifier:
    def __init__(self, issuers: list[str], client_id: str, timeout: float = 5.0) -> None:
        self._issuers = {i.rstrip("/") for i in issuers}
        self._client_id = client_id
        self._timeout = timeout
        self._keys: dict[str, jwt.PyJWKClient] = {}
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self._issuers)

    def _jwks(self, issuer: str) -> jwt.PyJWKClient:
        with self._lock:
            if issuer not in self._keys:
                try:
                    doc = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=self._timeout).json()
                    uri = str(doc["jwks_uri"])
                except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
                    raise IdTokenError(f"the issuer's OpenID configuration could not be read ({exc.__class__.__name__})") from None
                self._keys[issuer] = jwt.PyJWKClient(uri, cache_keys=True, lifespan=3600, timeout=int(self._timeout))
            return self._keys[issuer]

    def verify(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise IdTokenError("send the SMART launch's id_token as 'Authorization: Bearer <id_token>'")
        token = token.strip()
        try:
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise IdTokenError("the id_token is not a JWT") from None
        issuer = str(unverified.get("iss", "")).rstrip("/")
        if issuer not in self._issuers:
            raise IdTokenError("the id_token's issuer is not trusted (TRIAL_CDS_SMART_ISSUERS)")
        try:
            key = self._jwks(issuer).get_signing_key_from_jwt(token).key
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=ALGORITHMS, audience=self._client_id,
                                                issuer=unverified["iss"], options={"require": ["exp", "iat", "sub"]},
                                                leeway=30)
        except jwt.ExpiredSignatureError:
            raise IdTokenError("the id_token has expired: launch the app again from the EHR") from None
        except jwt.PyJWKClientError as exc:
            raise IdTokenError(f"the issuer's signing key was not found ({exc})") from None
        except jwt.PyJWTError as exc:
            raise IdTokenError(f"the id_token was refused: {exc}") from None
        return Caller(issuer=issuer, subject=str(claims["sub"]), fhir_user=claims.get("fhirUser"))
