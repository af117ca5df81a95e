"""Typed Python values for what the CQL engine returns.

The worker tags every CQL value that JSON cannot carry by itself (`{"@type": "Quantity", ...}`);
untagged objects are Tuples. Decoding keeps CQL's meaning: fractional numbers become `Decimal`
(never float), date-times keep their precision as text beside the parsed value, nulls stay
`None`. The engine holds CQL Integer and Decimal as one JS number type, so a whole-number
Decimal (2.0) arrives as the int 2; callers that must tell them apart read the result type
from the ELM (as the conformance run does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Union

CqlValue = Union[None, bool, int, Decimal, str, "Quantity", "Code", "Concept", "Ratio", "Interval",
                 "CqlDateTime", "CqlDate", "CqlTime", "FhirValue", "Uncertainty", list[Any], dict[str, Any]]


@dataclass(frozen=True)
class Quantity:
    value: Decimal | None
    unit: str | None


@dataclass(frozen=True)
class Code:
    code: str | None
    system: str | None = None
    version: str | None = None
    display: str | None = None


@dataclass(frozen=True)
class Concept:
    codes: tuple[Code, ...]
    display: str | None = None


@dataclass(frozen=True)
class Ratio:
    numerator: Quantity | None
    denominator: Quantity | None


@dataclass(frozen=True)
class Interval:
    low: Any
    high: Any
    low_closed: bool
    high_closed: bool


@dataclass(frozen=True)
class CqlDateTime:
    """A CQL DateTime; `text` is the engine's ISO form, which carries the precision."""

    text: str

    @property
    def value(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.text)
        except ValueError:
            return None


@dataclass(frozen=True)
class CqlDate:
    text: str

    @property
    def value(self) -> date | None:
        try:
            return date.fromisoformat(self.text)
        except ValueError:
            return None


@dataclass(frozen=True)
class CqlTime:
    text: str


@dataclass(frozen=True)
class Uncertainty:
    low: Any
    high: Any


@dataclass(frozen=True)
class FhirValue:
    """A FHIR resource or element exactly as it came in (`fhir_type` e.g. "Observation")."""

    fhir_type: str
    json: Any = field(compare=False)


def _number(value: Any) -> int | Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("boolean is not a number")
    if isinstance(value, int):
        return value
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def decode(value: Any) -> CqlValue:
    """Tagged engine JSON -> typed value (see module docstring)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        raise TypeError(f"unexpected engine value {value!r}")
    tag = value.get("@type")
    if tag is None:
        return {k: decode(v) for k, v in value.items()}
    if tag == "Quantity":
        num = _number(value.get("value"))
        return Quantity(Decimal(num) if isinstance(num, int) else num, value.get("unit"))
    if tag == "Code":
        return Code(value.get("code"), value.get("system"), value.get("version"), value.get("display"))
    if tag == "Concept":
        return Concept(tuple(c for c in (decode(x) for x in value.get("codes") or []) if isinstance(c, Code)),
                       value.get("display"))
    if tag == "Ratio":
        top, bottom = decode(value.get("numerator")), decode(value.get("denominator"))
        return Ratio(top if isinstance(top, Quantity) else None, bottom if isinstance(bottom, Quantity) else None)
    if tag == "Interval":
        return Interval(decode(value.get("low")), decode(value.get("high")),
                        bool(value.get("lowClosed")), bool(value.get("highClosed")))
    if tag == "DateTime":
        return CqlDateTime(value["value"])
    if tag == "Date":
        return CqlDate(value["value"])
    if tag == "Time":
        return CqlTime(value["value"])
    if tag == "Uncertainty":
        return Uncertainty(decode(value.get("low")), decode(value.get("high")))
    if tag.startswith("FHIR."):
        return FhirValue(tag[5:], value.get("value"))
    return {k: decode(v) for k, v in value.items() if k != "@type"}
