"""The result shapes of DESIGN's contract (card extension and `evaluate --json`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..fhir.coding import Coding as Coding  # re-exported: the criterion shape names it

Verdict = Literal["excluded", "likely-eligible", "possibly-eligible"]
Status = Literal["met", "not-met", "unknown"]
CriterionType = Literal["inclusion", "exclusion", "review"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Evidence(_Model):
    reference: str | None = None
    value: float | int | str | None = None
    unit: str | None = None
    date: str | None = None
    note: str | None = None


class CriterionResult(_Model):
    id: str
    type: CriterionType
    text: str
    status: Status
    evidence: list[Evidence] = []
    missing: list[Coding] = []


class TrialResult(_Model):
    researchStudy: str
    verdict: Verdict
    criteria: list[CriterionResult]
