"""CDS Hooks 2.0 client authentication: a JWT signed by a trusted CDS client (PyJWT).

Checks, in order (spec v2.0.1 "Trusting CDS Clients"), none of which touches the network
until the token's issuer is configured and its header and claims are well formed:
a Bearer token of bounded size; header `alg` ES384 or RS384 (never `none`, never HMAC, whose
"secret" could be a public key), `typ` JWT, a `kid`; `iss` on the allowlist; `exp`, `iat` (and
`nbf` when present) are numbers, the lifetime `exp - iat` is at most `max_lifetime`, the token
is not expired, not issued in the future and already valid; the key `kid` from the issuer's
configured JWK Set (cds.auth.jwks: `jku` is never fetched); signature; `aud` = the endpoint
called; `jti` not used before (the replay guard is durable: it lives in the service's store).

A failure raises AuthError with a reason for the log; the client is told only "authentication
failed" and a correlation id (the reason would tell trusted issuers from untrusted ones, echo
the kid, or name a network error). No reason ever holds the token.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

import jwt

from .jwks import IssuerKeys, KeyRefused, issuer_urls

ALLOWED_ALGORITHMS = ("ES384", "RS384")
MAX_TOKEN_BYTES = 8 * 1024


class AuthError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayGuard(Protocol):
    """Remembers (issuer, jti) until the token expires; True when the pair is new (and now taken).

    Async because the durable guard writes to SQLite, which must happen off the event loop."""

    async def __call__(self, issuer: str, jti: str, expires: float) -> bool: ...


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(claims: Mapping[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise AuthError(f"JWT lacks the {name} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError(f"JWT {name} must be a number (NumericDate)")
    return float(value)


class JwtVerifier:
    def __init__(self, trusted_issuers: Mapping[str, str], *, leeway: float = 30.0, max_lifetime: float = 300.0,
                 keys: IssuerKeys | None = None) -> None:
        self.trusted = dict(trusted_issuers)
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.keys = keys or IssuerKeys(issuer_urls(self.trusted))

    def close(self) -> None:
        self.keys.close()

    def check_unverified(self, authorization: str | None, now: float | None = None) -> tuple[str, dict[str, Any],
                                                                                             dict[str, Any]]:
        """Everything that can be checked without a key: (token, header, claims) or AuthError."""
        if not self.trusted:
            raise AuthError("no trusted issuers are configured (TRIAL_CDS_TRUSTED_ISSUERS)")
        if not authorization:
            raise AuthError("missing Authorization header")
        if len(authorization) > MAX_TOKEN_BYTES:
            raise AuthError(f"Authorization header longer than {MAX_TOKEN_BYTES} bytes")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <JWT>'")
        token = token.strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise AuthError(f"JWT algorithm {_shown(alg)} is not accepted (ES384 or RS384)")
        if str(header.get("typ", "")).upper() != "JWT":
            raise AuthError("JWT header typ must be 'JWT' (CDS Hooks 2.0)")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("JWT header has no kid")
        if len(kid) > 256:
            raise AuthError("JWT kid is longer than 256 characters")
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer not in self.trusted:
            raise AuthError(f"JWT issuer {_shown(issuer)} is not trusted")
        now = time.time() if now is None else now
        exp = _number(claims, "exp", True)
        iat = _number(claims, "iat", True)
        nbf = _number(claims, "nbf", False)
        assert exp is not None and iat is not None
        if exp - iat > self.max_lifetime:
            raise AuthError(f"JWT lifetime exp - iat = {exp - iat:.0f} s exceeds {self.max_lifetime:.0f} s")
        if exp <= now - self.leeway:
            raise AuthError("JWT has expired")
        if iat > now + self.leeway:
            raise AuthError("JWT issued in the future (iat)")
        if nbf is not None and nbf > now + self.leeway:
            raise AuthError("JWT not yet valid (nbf)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise AuthError("JWT jti must be a non-empty string of at most 256 characters")
        return token, header, claims

    async def verify(self, authorization: str | None, audience: str, replay: ReplayGuard | None = None,
                     ) -> dict[str, Any]:
        """The verified claims, or AuthError. `replay.claim_jti` is called last (it writes)."""
        token, header, unverified = self.check_unverified(authorization)
        alg, kid, issuer = header["alg"], header["kid"], unverified["iss"]
        try:
            key = await self.keys.signing_key(issuer, kid, alg)
        except KeyRefused as exc:
            raise AuthError(f"JWT {exc}") from None
        claims = self.verify_signed(token, key, alg, issuer, audience)
        if replay is not None and not await replay(issuer, claims["jti"], float(claims["exp"]) + self.leeway):
            raise AuthError("replayed token (jti already used)")
        return claims

    def verify_signed(self, token: str, key: jwt.PyJWK, alg: str, issuer: str, audience: str) -> dict[str, Any]:
        """Signature and claims, with a key IssuerKeys.signing_key chose for `alg`."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=audience, issuer=issuer, leeway=self.leeway,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("JWT issued in the future or not yet valid") from None
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
        return claims
