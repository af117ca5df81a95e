"""How clinicians write things: test names, units and dates, for cards and the clinician view.

Nothing here decides anything; it only names what the rules already decided. Test names come
from the code (LOINC long names are "Component [Property] in System by Method": the component,
written the way a clinician writes it, plus serum/urine where that is what tells two tests
apart); units from UCUM (annotations such as `{score}` dropped, `10*9/L` as 10⁹/L, `u` as µ).
A code or unit not known here falls back to its own display, never to nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

LOINC = "http://loinc.org"
LOCAL = "https://trial-cds.dev/codes"

# LOINC components (the part of the long name before " [") as clinicians name them.
_COMPONENTS: dict[str, str] = {
    "glomerular filtration rate/1.73 sq m.predicted": "eGFR",
    "creatinine": "creatinine",
    "creatinine renal clearance": "creatinine clearance",
    "alanine aminotransferase": "ALT",
    "aspartate aminotransferase": "AST",
    "bilirubin.total": "total bilirubin",
    "choriogonadotropin (pregnancy test)": "hCG",
    "choriogonadotropin.beta subunit (pregnancy test)": "β-hCG",
    "choriogonadotropin": "hCG",
    "choriogonadotropin.beta subunit": "β-hCG",
    "hepatitis b virus surface ag": "HBsAg",
    "hepatitis b virus core ab": "anti-HBc",
    "hepatitis b virus dna": "HBV DNA",
    "hepatitis c virus ab": "HCV antibody",
    "hepatitis c virus rna": "HCV RNA",
    "hiv 1+2 ab+hiv1 p24 ag": "HIV-1/2 Ag/Ab",
    "hiv 1+2 ab": "HIV-1/2 antibody",
    "hiv 1 ab": "HIV-1 antibody",
    "treponema pallidum ab": "syphilis antibody",
    "treponema pallidum igg+igm ab": "syphilis antibody",
    "reagin ab": "RPR",
    "cytomegalovirus dna": "CMV DNA",
    "left ventricular ejection fraction": "LVEF",
    "leukocytes": "WBC",
    "neutrophils": "neutrophils",
    "lymphocytes": "lymphocytes",
    "platelets": "platelets",
    "hemoglobin": "haemoglobin",
    "cd19 cells": "CD19+ B cells",
    "cd19 cells/100 cells": "CD19+ B cells %",
    "nuclear ab": "ANA",
    "dna double strand ab": "anti-dsDNA",
    "smith extractable nuclear ab": "anti-Sm",
    "forced vital capacity": "FVC",
    "oxygen saturation": "SpO₂",
    "body weight": "weight",
    "body height": "height",
    "functional capacity nyha": "NYHA class",
    "ecog performance status score": "ECOG",
}

# The project's local codes (codes.md) for scores that have none elsewhere.
_LOCAL: dict[str, str] = {
    "sledai-2k": "SLEDAI-2K",
    "selena-sledai": "SELENA-SLEDAI",
    "pga": "PGA",
    "bilag-2004": "BILAG-2004",
    "eular-acr-2019": "EULAR/ACR 2019 score",
    "lldas": "LLDAS",
    "doris-remission": "DORIS remission",
    "dlco-hb-pct-pred": "DLCO (Hb-corrected, % predicted)",
    "car-t-cd19": "CD19 CAR-T",
}

_SYSTEM_WORD = {"ser/plas": "serum", "serum or plasma": "serum", "serum": "serum", "urine": "urine"}


def test_name(system: str | None, code: str, display: str | None = None) -> str:
    """The short name a clinician uses for a test or score (eGFR, HBsAg, serum hCG, SLEDAI-2K)."""
    if system == LOCAL and code in _LOCAL:
        return _LOCAL[code]
    if display:
        component = re.split(r" \[| in (?:\d+ hour )?(?:Serum|Blood|Urine|Plasma)\b| by ", display, maxsplit=1)[0].strip()
        name = _COMPONENTS.get(component.lower())
        if name:
            if name in {"hCG", "β-hCG"}:
                where = re.search(r"\bin (serum or plasma|serum|urine)", display, re.IGNORECASE)
                if where:
                    name = f"{_SYSTEM_WORD[where.group(1).lower()]} {name}"
            return name
        return display if len(display) <= 40 else component
    return code


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
_UNITS: dict[str, str] = {
    "a": "years", "mo": "months", "wk": "weeks", "d": "days", "h": "hours", "min": "minutes",
    "mL/min/{1.73_m2}": "mL/min/1.73 m²", "mL/min/1.73m2": "mL/min/1.73 m²",
    "%": "%", "[IU]/mL": "IU/mL", "[IU]/L": "IU/L", "mg/d": "mg/day", "g/d": "g/day",
    "mg/kg/d": "mg/kg/day", "[ppth]": "‰",
}


def unit(ucum: str | None) -> str:
    """A UCUM unit as clinicians write it: 10*9/L -> 10⁹/L, umol/L -> µmol/L, {score} -> ''."""
    if not ucum:
        return ""
    if ucum in _UNITS:
        return _UNITS[ucum]
    text = re.sub(r"\{[^}]*\}", "", ucum)  # annotations carry no unit: {score}, {titer}, {cells}
    text = re.sub(r"10\*(-?\d+)", lambda m: "10" + m.group(1).translate(_SUPERSCRIPT), text)
    text = re.sub(r"\[([A-Za-z_]+)\]", r"\1", text)  # [IU] -> IU
    text = re.sub(r"(?<![A-Za-z])u(?=(L|mol|g|kat|IU)\b)", "µ", text)
    text = text.replace("_", " ").strip()
    return "" if text in {"1", "/"} else text.strip("/") if text.startswith("/") and len(text) == 1 else text


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e6 else f"{value:.3g}"
    return str(value)


def quantity(value: Any, ucum: str | None) -> str:
    """"12", "117 mL/min/1.73 m²", "2.3 × 10⁷ IU/mL", "40 %"."""
    shown = unit(ucum)
    if value is None or value == "":
        return shown
    if isinstance(value, str) and not re.fullmatch(r"-?\d+(\.\d+)?", value):
        return value  # a coded or text result ("Negative", "B", a drug name): its unit is not the value's
    text = number(value)
    if not shown:
        return text
    if shown.startswith("/"):  # 210 /µL reads 210/µL
        return f"{text}{shown}"
    if shown.startswith("10") and shown[2:3] in "⁰¹²³⁴⁵⁶⁷⁸⁹⁻":  # 2.5 × 10⁹/L
        return f"{text} × {shown}"
    return f"{text} {shown}"


def day(value: str | date | datetime | None) -> str:
    """A date as an unambiguous day: 12 Nov 2026 (never 11/12)."""
    if value is None or value == "":
        return ""
    if isinstance(value, (date, datetime)):
        d = value
    else:
        text = str(value)
        try:
            d = datetime.fromisoformat(text) if len(text) > 10 else date.fromisoformat(text[:10])
        except ValueError:
            return text[:10]
    return f"{d.day} {d.strftime('%b')} {d.year}"


def codeable_name(concept: Mapping[str, Any] | None) -> str | None:
    """The clinician's name of a CodeableConcept: a known test name, else its text, else a display."""
    if not concept:
        return None
    for c in concept.get("coding") or []:
        if c.get("code") and (c.get("system") == LOCAL or c.get("system") == LOINC):
            name = test_name(c.get("system"), str(c["code"]), c.get("display"))
            if name != c.get("code"):
                return name
    if concept.get("text"):
        return str(concept["text"])
    for c in concept.get("coding") or []:
        if c.get("display"):
            return str(c["display"])
    return None
