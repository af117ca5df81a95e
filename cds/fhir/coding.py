"""The one `Coding` model: FHIR R4 Coding, used for the rules' metadata, criteria's missing
tests, card topics and override reasons alike (and so in `extension["trial-cds"]`).

Frozen (hashable, safe to share), written without absent elements, and closed: a field FHIR's Coding does not have is an error,
whether it comes from a rules file, a feedback request or the code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class Coding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str | None = None
    version: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None
    userSelected: bool | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An absent element is left out, never written as null (FHIR JSON has no nulls)."""
        return {k: v for k, v in handler(self).items() if v is not None}
