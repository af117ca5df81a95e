"""Service settings: `TRIAL_CDS_*` environment variables (pydantic-settings); flags override."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .net.urls import HttpUrl, UnsafeUrl, parse_http_url
from .paths import BUNDLES_DIR, ROOT


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIAL_CDS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    insecure: bool = Field(False, description="accept hooks without a JWT (local demos only)")
    service_url: str | None = Field(
        None, description="public base URL of this service (JWT `aud`); default http://{host}:{port}")
    fhir_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="URL prefixes of FHIR servers the service may call with a token")
    trusted_issuers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="issuer -> JWKS URL, as JSON or `iss=url,iss2=url2`")
    db: Path = Field(ROOT / "trial-cds.sqlite", description="feedback and audit SQLite file")
    catalogue: str = Field(str(BUNDLES_DIR), description="directory of trial bundles or a FHIR base URL")
    catalogue_token: str | None = Field(
        None, description="bearer token for reading the catalogue when TRIAL_CDS_CATALOGUE is a FHIR base URL")
    terminology_url: str | None = Field(
        None, description="FHIR terminology server base URL: SNOMED CT is-a definitions of the value sets are expanded "
                          "there (ValueSet/$expand) at catalogue load and reload; on failure the committed expansion stays")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    pool_size: int | None = Field(None, ge=1, le=16)
    cql_timeout: float = Field(10.0, gt=0, description="seconds per CQL evaluation")
    fetch_timeout: float = Field(5.0, gt=0, description="seconds per FHIR request")
    hook_budget: float = Field(15.0, gt=0, description="seconds for all FHIR fetching in one hook call")
    fetch_page_cap: int = Field(20, ge=1, description="most `next` pages followed per search")
    max_body_bytes: int = Field(
        8_000_000, ge=1024, description="largest request body accepted (bytes); larger ones get 413 before they are read")
    max_record_resources: int = Field(
        5000, ge=10, description="most resources in one patient's record (prefetched and fetched together)")
    max_resources_per_type: int = Field(
        3000, ge=10, description="most resources of one type in one patient's record")
    jwt_max_lifetime: float = Field(300.0, gt=0, description="longest accepted client JWT lifetime, exp - iat (s)")
    jwt_leeway: float = Field(30.0, ge=0, description="clock skew tolerated on exp / iat / nbf (s)")
    admin_token: str | None = Field(
        None, description="bearer token for /admin endpoints (besides a CDS Hooks JWT); in insecure mode, "
                          "/admin/reload is open when this is unset and needs it when it is set")

    @field_validator("fhir_allowlist", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("fhir_allowlist")
    @classmethod
    def _allowlist_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            try:
                parse_http_url(url)
            except UnsafeUrl as exc:
                raise ValueError(f"TRIAL_CDS_FHIR_ALLOWLIST entry refused by the URL policy: {exc}") from None
        return value

    @field_validator("trusted_issuers")
    @classmethod
    def _jwks_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for iss, url in value.items():
            try:
                parse_http_url(url)
            except UnsafeUrl as exc:
                raise ValueError(f"TRIAL_CDS_TRUSTED_ISSUERS: JWKS URL of {iss!r} refused by the URL policy: {exc}") from None
        return value

    @cached_property
    def allowlist(self) -> list[HttpUrl]:
        """The FHIR servers the service may call with a client's token, parsed by the URL policy."""
        return [parse_http_url(url) for url in self.fhir_allowlist]

    @field_validator("trusted_issuers", mode="before")
    @classmethod
    def _issuers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return {}
            if text.startswith("{"):
                return json.loads(text)
            out = {}
            for pair in _split(text):
                iss, sep, url = pair.partition("=")
                if not sep:
                    raise ValueError(f"TRIAL_CDS_TRUSTED_ISSUERS entry needs iss=jwks_url: {pair!r}")
                out[iss.strip()] = url.strip()
            return out
        return value

    @property
    def base_url(self) -> str:
        return (self.service_url or f"http://{self.host}:{self.port}").rstrip("/")
