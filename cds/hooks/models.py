"""CDS Hooks 2.0 JSON shapes (spec v2.0.1), written once and used by routes and tests.

Requests are validated strictly enough to answer a clear 400 (unknown hook, missing
context.patientId, malformed prefetch) and loosely enough to accept what real CDS clients
send (extra fields are kept, as the spec's extension mechanism allows).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..fhir.coding import Coding
from ..net.urls import UnsafeUrl, parse_http_url

FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"


def _not_a_path_segment(value: str) -> str:
    # "." and ".." match FHIR's id pattern but would walk up a URL path when placed in one.
    if set(value) == {"."}:
        raise ValueError("not a FHIR id")
    return value


FhirId = Annotated[str, Field(pattern=FHIR_ID), AfterValidator(_not_a_path_segment)]


class _In(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- request -------------------------------------------------------------------------------


class FhirAuthorization(_In):
    access_token: str = Field(min_length=1)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        if value.lower() != "bearer":
            raise ValueError("fhirAuthorization.token_type must be 'Bearer'")
        return value

    def __repr__(self) -> str:  # never let a token reach a log line through repr()
        return f"FhirAuthorization(subject={self.subject!r}, scope={self.scope!r}, access_token=<redacted>)"

    __str__ = __repr__


class PatientViewContext(_In):
    patientId: FhirId
    userId: str | None = None
    encounterId: str | None = None


class HookRequest(_In):
    hook: str = Field(json_schema_extra={"enum": ["patient-view"]})
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = Field(None, max_length=2048, json_schema_extra={"format": "uri"})
    fhirAuthorization: FhirAuthorization | None = None
    # Any hook's context is an object; this service reads the patient-view one (PatientViewContext).
    context: dict[str, Any] = Field(json_schema_extra={
        "required": ["patientId"], "properties": {"patientId": {"type": "string", "pattern": FHIR_ID},
                                                  "userId": {"type": "string"}}})
    prefetch: dict[str, dict[str, Any] | None] | None = None

    @field_validator("fhirServer")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        # The same parser that will connect decides (cds.net.urls): backslashes, userinfo,
        # encoded separators and the like are refused here, with the reason.
        if value is not None:
            try:
                parse_http_url(value)
            except UnsafeUrl as exc:
                raise ValueError(f"fhirServer is not an acceptable URL: {exc}") from None
        return value

    @model_validator(mode="after")
    def _auth_needs_server(self) -> HookRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirServer is required when fhirAuthorization is given")
        return self

    def __repr__(self) -> str:
        return f"HookRequest(hook={self.hook!r}, hookInstance={self.hookInstance!r})"


# -- response ------------------------------------------------------------------------------


class Source(_Out):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(_Out):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(_Out):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None
    autolaunchable: bool | None = None


class Card(_Out):
    uuid: str | None = None
    summary: str = Field(max_length=139)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selection(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        if self.overrideReasons and any(not r.display for r in self.overrideReasons):
            raise ValueError("override reasons need a display")
        return self


class CardsResponse(_Out):
    cards: list[Card]
    systemActions: list[Action] | None = None


class Service(_Out):
    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(_Out):
    services: list[Service]


# -- feedback ------------------------------------------------------------------------------


class AcceptedSuggestion(_In):
    id: str = Field(min_length=1, max_length=128)


class OverrideReason(_In):
    reason: Coding | None = None
    userComment: str | None = Field(None, max_length=4000)


class Feedback(_In):
    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str = Field(json_schema_extra={"format": "date-time"})

    @field_validator("outcomeTimestamp")
    @classmethod
    def _timestamp(cls, value: str) -> str:
        from datetime import datetime

        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("outcomeTimestamp must be an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            raise ValueError("outcomeTimestamp needs a UTC offset (e.g. ...Z)")
        return value

    @model_validator(mode="after")
    def _accepted(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required for an accepted outcome")
        return self


class FeedbackRequest(_In):
    feedback: list[Feedback] = Field(min_length=1, max_length=100)
