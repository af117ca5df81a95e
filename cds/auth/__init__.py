"""Who may call the service: CDS Hooks client JWTs (spec 2.0 "Trusting CDS Clients")."""

from .jwks import IssuerKeys, fetch_jwks
from .verifier import AuthError, JwtVerifier, ReplayGuard

__all__ = ["AuthError", "IssuerKeys", "JwtVerifier", "ReplayGuard", "fetch_jwks"]
