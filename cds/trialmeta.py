"""The metadata a trial is built from: `rules/<trial-id>.json`, beside `rules/<trial-id>.cql`.

A new trial is these two files and nothing else (no Python): the build validates the JSON
with these models, checks every criterion's `define` exists in the compiled ELM, and writes
the trial's FHIR transaction Bundle (ResearchStudy, eligibility Group, Library, ...).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(_Strict):
    system: str
    code: str
    display: str | None = None


class Threshold(_Strict):
    """A criterion's threshold, as the Group characteristic's value[x].

    kind "quantity": comparator + value + unit (UCUM); "range": low/high (either may be
    absent) + unit; "code": a CodeableConcept value (e.g. Negative).
    """

    kind: Literal["quantity", "range", "code"]
    comparator: Literal["<", "<=", ">=", ">"] | None = None
    value: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str | None = None
    code: Coding | None = None

    @model_validator(mode="after")
    def _shape(self) -> Threshold:
        if self.kind == "quantity" and self.value is None:
            raise ValueError("a quantity threshold needs a value")
        if self.kind == "range" and self.low is None and self.high is None:
            raise ValueError("a range threshold needs low or high")
        if self.kind == "code" and self.code is None:
            raise ValueError("a code threshold needs a code")
        return self


class Criterion(_Strict):
    id: str = Field(pattern=r"^[0-9]{3}-[IE][0-9]+$", description="<seed>-I<n> / <seed>-E<n>")
    type: Literal["inclusion", "exclusion"]
    review: bool = Field(False, description="clinician-review item: listed, never decides a verdict")
    define: str = Field(description="name of the CQL define that evaluates it")
    text: str = Field(min_length=3, description="the seed's wording")
    reading: str | None = Field(None, description="how the seed was read where it is garbled or vague")
    code: Coding | None = Field(None, description="what is measured")
    threshold: Threshold | None = None

    @property
    def kind(self) -> Literal["inclusion", "exclusion", "review"]:
        return "review" if self.review else self.type


class Site(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    name: str
    city: str | None = None
    state: str | None = None
    country: str


class Contact(_Strict):
    name: str
    email: str | None = None
    phone: str | None = None
    role: str | None = None


class Organization(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    name: str
    role: Literal["lead-sponsor", "collaborator"] = "lead-sponsor"


class Arm(_Strict):
    name: str
    type: str = "experimental"
    description: str


class Trial(_Strict):
    id: str = Field(pattern=r"^[a-z0-9\-]{1,64}$", description="ResearchStudy.id")
    seed: str = Field(pattern=r"^[0-9]{3}$")
    version: str = "1.0.0"
    nct: str | None = Field(None, pattern=r"^NCT[0-9]{8}$")
    local_identifier: str | None = None
    title: str
    short_title: str | None = Field(
        None, max_length=70, description="what a clinician calls the trial: the card summary names it by this")
    official_title: str | None = None
    description: str
    status: Literal["active", "closed-to-accrual", "completed", "in-review", "approved"] = "active"
    phase: Literal["phase-1", "phase-1-phase-2", "phase-2", "phase-3", "n-a"]
    keywords: list[str] = []
    conditions: list[Coding] = []
    sponsor: Organization
    collaborators: list[Organization] = []
    sites: list[Site] = []
    contacts: list[Contact] = []
    start: date | None = None
    end: str | None = Field(None, description="YYYY, YYYY-MM or YYYY-MM-DD")
    enrollment: int | None = None
    arms: list[Arm] = []
    url: str | None = Field(None, description="the public trial page")
    criteria: list[Criterion]

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, value: list[Criterion]) -> list[Criterion]:
        ids = [c.id for c in value]
        if len(set(ids)) != len(ids):
            raise ValueError("criterion ids must be unique")
        defines = [c.define for c in value]
        if len(set(defines)) != len(defines):
            raise ValueError("each criterion needs its own define")
        return value

    @model_validator(mode="after")
    def _seed_ids(self) -> Trial:
        wrong = [c.id for c in self.criteria if not c.id.startswith(self.seed + "-")]
        if wrong:
            raise ValueError(f"criterion ids must start with the seed {self.seed}: {wrong}")
        return self

    @property
    def library(self) -> str:
        """The CQL library holding the criteria is named after the trial id."""
        return self.id

    @property
    def page(self) -> str | None:
        if self.url:
            return self.url
        return f"https://clinicaltrials.gov/study/{self.nct}" if self.nct else None


def load_trial(path: Path) -> Trial:
    return Trial.model_validate(json.loads(path.read_text(encoding="utf-8")))


def trial_files(rules_dir: Path) -> list[Path]:
    """Every trial metadata file: a `<id>.json` with a `<id>.cql` beside it."""
    return sorted(p for p in rules_dir.glob("*.json") if p.with_suffix(".cql").exists())
