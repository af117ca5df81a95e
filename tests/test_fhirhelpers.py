"""rules/FHIRHelpers.cql, executed: every function family through the translator and the engine.

Each test library below is real CQL translated by the official translator against rules/ (so
`include FHIRHelpers` resolves to the project's library) and run by the project's Node workers
against a hand-made Bundle; assertions are on the decoded values (`cds.engine.values`).
Everything starts once per module: one translator, one engine, one evaluation per library.
"""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cds.engine import Engine
from cds.engine.translator import Translation, Translator
from cds.engine.values import Code, Concept, CqlDate, CqlDateTime, CqlTime, Interval, Quantity

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
FHIRHELPERS_CQL = RULES / "FHIRHelpers.cql"
MODELINFO = (ROOT / "cds" / "engine" / "node_modules" / "cql-exec-fhir" / "lib" / "modelInfos"
             / "fhir-modelinfo-4.0.1.xml")
AT = "2026-01-01T00:00:00Z"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
FHIR_NS = "{http://hl7.org/fhir}"


# -- the data ----------------------------------------------------------------------------------

def _obs(oid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "0000-0"}]}, **fields}


BUNDLE: dict[str, Any] = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in [
    {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-06",
     "active": True, "deceasedBoolean": False},
    # Quantities
    _obs("q-ucum", valueQuantity={"value": 7.5, "unit": "IU/mL", "system": UCUM, "code": "[IU]/mL"}),
    _obs("q-lt", valueQuantity={"value": 10, "comparator": "<", "unit": "mg", "system": UCUM, "code": "mg"}),
    _obs("q-mg", valueQuantity={"value": 7.5, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}),
    _obs("q-le", valueQuantity={"value": 10, "comparator": "<=", "system": UCUM, "code": "mg"}),
    _obs("q-ge", valueQuantity={"value": 10, "comparator": ">=", "system": UCUM, "code": "mg"}),
    _obs("q-gt", valueQuantity={"value": 10, "comparator": ">", "system": UCUM, "code": "mg"}),
    _obs("q-novalue", valueQuantity={"unit": "mg", "system": UCUM, "code": "mg"}),
    _obs("q-absent", valueQuantity={"_value": {"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]},
        "system": UCUM, "code": "mg"}),
    _obs("q-nosystem", valueQuantity={"value": 3, "unit": "mg"}),
    _obs("q-othersystem", valueQuantity={"value": 2, "unit": "mg", "system": SCT, "code": "258684004"}),
    _obs("q-nounit", valueQuantity={"value": 4}),
    _obs("q-years", valueQuantity={"value": 65, "unit": "years", "system": UCUM, "code": "a"}),
    _obs("q-months", valueQuantity={"value": 6, "unit": "months", "system": UCUM, "code": "mo"}),
    _obs("q-weeks", valueQuantity={"value": 2, "unit": "weeks", "system": UCUM, "code": "wk"}),
    _obs("q-days", valueQuantity={"value": 3, "unit": "days", "system": UCUM, "code": "d"}),
    _obs("q-hours", valueQuantity={"value": 4, "unit": "h", "system": UCUM, "code": "h"}),
    _obs("q-minutes", valueQuantity={"value": 5, "unit": "min", "system": UCUM, "code": "min"}),
    _obs("q-seconds", valueQuantity={"value": 6, "unit": "s", "system": UCUM, "code": "s"}),
    _obs("q-ms", valueQuantity={"value": 7, "unit": "ms", "system": UCUM, "code": "ms"}),
    _obs("q-calendar", valueQuantity={"value": 8, "system": "http://hl7.org/fhirpath/CodeSystem/calendar-units",
                                      "code": "wk"}),
    # Codes and concepts
    _obs("cc", code={"coding": [
        {"system": LOINC, "code": "2345-7", "display": "Glucose [Mass/volume] in Serum or Plasma"},
        {"system": SCT, "version": "http://snomed.info/sct/900000000000207008/version/20230131",
         "code": "33747003"}], "text": "Blood glucose"},
        valueString="normal", text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">hi</div>'}),
    _obs("cc-textonly", code={"text": "Free text only"}),
    # Periods, ranges, ratios
    _obs("p-closed", effectivePeriod={"start": "2020-01-01T10:00:00+02:00", "end": "2020-01-31"}),
    _obs("p-noend", effectivePeriod={"start": "2020-01-01T10:00:00+02:00"}),
    _obs("p-nostart", effectivePeriod={"end": "2020-01-31T00:00:00Z"}),
    _obs("r-both", valueRange={"low": {"value": 1, "system": UCUM, "code": "mg"},
                               "high": {"value": 5, "system": UCUM, "code": "mg"}}),
    _obs("r-high", valueRange={"high": {"value": 5, "system": UCUM, "code": "mg"}}),
    _obs("r-empty", valueRange={}),
    _obs("ratio", valueRatio={"numerator": {"value": 1, "system": UCUM, "code": "mg"},
                              "denominator": {"value": 2, "system": UCUM, "code": "mL"}}),
    # Date, date-time, time and the other primitives
    _obs("dt-offset", effectiveDateTime="2020-01-01T10:00:00+02:00", issued="2020-01-02T03:04:05.123Z"),
    _obs("dt-month", effectiveDateTime="2020-03"),
    _obs("time", valueTime="10:11:12"),
    _obs("bool-true", valueBoolean=True),
    _obs("bool-false", valueBoolean=False),
    _obs("int", valueInteger=42),
    _obs("status-prelim", status="preliminary", code={"coding": [{"system": LOINC, "code": "1111-1"}]}),
]]}


# -- the libraries -----------------------------------------------------------------------------

PRELUDE = """
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1'
codesystem "LOINC": 'http://loinc.org'
code "Glucose": '2345-7' from "LOINC"
context Patient
define function Obs(id String): First([Observation] O where O.id = id)
define function Qty(id String): FHIRHelpers.ToQuantity(Obs(id).value as FHIR.Quantity)
"""

MAIN = "library FHIRHelpersTest\n" + PRELUDE + """
define "Q ucum": Qty('q-ucum')
define "Q lt": Qty('q-lt')
define "Q novalue": Qty('q-novalue')
define "Q absent": Qty('q-absent')
define "Q missing": Qty('int')
define "Q nosystem": Qty('q-nosystem')
define "Q othersystem": Qty('q-othersystem')
define "Q nounit": Qty('q-nounit')
define "Q years": Qty('q-years')
define "Q months": Qty('q-months')
define "Q weeks": Qty('q-weeks')
define "Q days": Qty('q-days')
define "Q hours": Qty('q-hours')
define "Q minutes": Qty('q-minutes')
define "Q seconds": Qty('q-seconds')
define "Q ms": Qty('q-ms')
define "Q calendar": Qty('q-calendar')
define "Q days = 72 hours": Qty('q-days') = 72 hours
define "Q IU compared": Qty('q-ucum') > 5 '[IU]/mL'
define "Q calendar unit passthrough": FHIRHelpers.ToCalendarUnit('mg')
define "Q ignoring lt": FHIRHelpers.ToQuantityIgnoringComparator(Obs('q-lt').value as FHIR.Quantity)
define "QI lt": FHIRHelpers.ToInterval(Obs('q-lt').value as FHIR.Quantity)
define "QI le": FHIRHelpers.ToInterval(Obs('q-le').value as FHIR.Quantity)
define "QI ge": FHIRHelpers.ToInterval(Obs('q-ge').value as FHIR.Quantity)
define "QI gt": FHIRHelpers.ToInterval(Obs('q-gt').value as FHIR.Quantity)
define "QI plain": FHIRHelpers.ToInterval(Obs('q-nosystem').value as FHIR.Quantity)
define "QI novalue": FHIRHelpers.ToInterval(Obs('q-novalue').value as FHIR.Quantity)
define "QI lt contains 9": 9 'mg' in FHIRHelpers.ToInterval(Obs('q-lt').value as FHIR.Quantity)
define "QI lt contains 10": 10 'mg' in FHIRHelpers.ToInterval(Obs('q-lt').value as FHIR.Quantity)

define "Concept": FHIRHelpers.ToConcept(Obs('cc').code)
define "Concept text only": FHIRHelpers.ToConcept(Obs('cc-textonly').code)
define "Concept null": FHIRHelpers.ToConcept(Obs('cc').dataAbsentReason)
define "Code first": FHIRHelpers.ToCode(First(Obs('cc').code.coding))
define "Code second": FHIRHelpers.ToCode(Last(Obs('cc').code.coding))
define "Code null": FHIRHelpers.ToCode(First(Obs('cc-textonly').code.coding))

define "Period closed": FHIRHelpers.ToInterval(Obs('p-closed').effective as FHIR.Period)
define "Period no end": FHIRHelpers.ToInterval(Obs('p-noend').effective as FHIR.Period)
define "Period no end: end": end of FHIRHelpers.ToInterval(Obs('p-noend').effective as FHIR.Period)
define "Period no end contains 2025": @2025-06-01T00:00:00Z during FHIRHelpers.ToInterval(Obs('p-noend').effective as FHIR.Period)
define "Period no start": FHIRHelpers.ToInterval(Obs('p-nostart').effective as FHIR.Period)
define "Period no start: start": start of FHIRHelpers.ToInterval(Obs('p-nostart').effective as FHIR.Period)
define "Period null": FHIRHelpers.ToInterval(Obs('int').effective as FHIR.Period)

define "Range both": FHIRHelpers.ToInterval(Obs('r-both').value as FHIR.Range)
define "Range high only": FHIRHelpers.ToInterval(Obs('r-high').value as FHIR.Range)
define "Range high only contains 0": 0 'mg' in FHIRHelpers.ToInterval(Obs('r-high').value as FHIR.Range)
define "Range empty": FHIRHelpers.ToInterval(Obs('r-empty').value as FHIR.Range)
define "Range null": FHIRHelpers.ToInterval(Obs('int').value as FHIR.Range)

define "Ratio": FHIRHelpers.ToRatio(Obs('ratio').value as FHIR.Ratio)
define "Ratio numerator": FHIRHelpers.ToRatio(Obs('ratio').value as FHIR.Ratio).numerator
define "Ratio denominator": FHIRHelpers.ToRatio(Obs('ratio').value as FHIR.Ratio).denominator
define "Ratio null": FHIRHelpers.ToRatio(Obs('int').value as FHIR.Ratio)

define "DateTime offset": FHIRHelpers.ToDateTime(Obs('dt-offset').effective as FHIR.dateTime)
define "DateTime month": FHIRHelpers.ToDateTime(Obs('dt-month').effective as FHIR.dateTime)
define "DateTime month precision": year from FHIRHelpers.ToDateTime(Obs('dt-month').effective as FHIR.dateTime)
define "DateTime month day": day from FHIRHelpers.ToDateTime(Obs('dt-month').effective as FHIR.dateTime)
define "DateTime instant": FHIRHelpers.ToDateTime(Obs('dt-offset').issued)
define "DateTime null": FHIRHelpers.ToDateTime(Obs('int').effective as FHIR.dateTime)
define "Date": FHIRHelpers.ToDate(Patient.birthDate)
define "Time": FHIRHelpers.ToTime(Obs('time').value as FHIR.time)
define "Boolean true": FHIRHelpers.ToBoolean(Obs('bool-true').value as FHIR.boolean)
define "Boolean false": FHIRHelpers.ToBoolean(Obs('bool-false').value as FHIR.boolean)
define "Boolean absent": FHIRHelpers.ToBoolean(Obs('int').value as FHIR.boolean)
define "Boolean patient active": FHIRHelpers.ToBoolean(Patient.active)
define "Boolean patient deceased": FHIRHelpers.ToBoolean(Patient.deceased as FHIR.boolean)
define "Decimal": FHIRHelpers.ToDecimal((Obs('q-ucum').value as FHIR.Quantity).value)
define "Decimal absent": FHIRHelpers.ToDecimal((Obs('q-absent').value as FHIR.Quantity).value)
define "Integer": FHIRHelpers.ToInteger(Obs('int').value as FHIR.integer)
define "Integer absent": FHIRHelpers.ToInteger(Obs('bool-true').value as FHIR.integer)

define "String": FHIRHelpers.ToString(Obs('cc').value as FHIR.string)
define "String of code subtype": FHIRHelpers.ToString(First(Obs('cc').code.coding).code)
define "String of uri": FHIRHelpers.ToString(First(Obs('cc').code.coding).system)
define "String of xhtml": FHIRHelpers.ToString(Obs('cc').text.div)
define "String absent": FHIRHelpers.ToString(Obs('int').value as FHIR.string)
define "String of ObservationStatus": FHIRHelpers.ToString(Obs('status-prelim').status)
define "String of AdministrativeGender": FHIRHelpers.ToString(Patient.gender)
define "String of NarrativeStatus": FHIRHelpers.ToString(Obs('cc').text.status)
"""

# No explicit FHIRHelpers call: every conversion below is inserted by the translator from the
# model info's conversionInfo and must land on the project's FHIRHelpers.
IMPLICIT = "library FHIRHelpersImplicit\n" + PRELUDE + """
define "Status equals final": Obs('cc').status = 'final'
define "Status equals final (preliminary)": Obs('status-prelim').status = 'final'
define "Final observations": [Observation] O where O.status = 'final'
define "Code equivalent": Obs('cc').code ~ "Glucose"
define "Coding in code list": exists ((Obs('cc').code.coding) C where C ~ "Glucose")
define "Gender is female": Patient.gender = 'female'
define "Born before 1980": Patient.birthDate before @1980-01-01
define "Active": Patient.active = true
define "Quantity greater": (Obs('q-mg').value as FHIR.Quantity) > 5 'mg/dL'
define "Quantity in g/L": (Obs('q-mg').value as FHIR.Quantity) = 0.075 'g/L'
define "Comparator quantity greater": (Obs('q-lt').value as FHIR.Quantity) > 5 'mg'
define "Effective after": (Obs('dt-offset').effective as FHIR.dateTime) after @2019-12-31T00:00:00Z
define "Issued before": Obs('dt-offset').issued before @2021-01-01T00:00:00Z
define "During period": @2020-01-15T00:00:00Z during (Obs('p-closed').effective as FHIR.Period)
define "In range": 3 'mg' in (Obs('r-both').value as FHIR.Range)
define "Integer plus one": (Obs('int').value as FHIR.integer) + 1
define "Boolean and": (Obs('bool-true').value as FHIR.boolean) and true
define "String concat": (Obs('cc').value as FHIR.string) + '!'
"""

# cql-execution refuses to build a Quantity whose unit is not valid UCUM: the evaluation fails.
BAD_UNIT = "library FHIRHelpersBadUnit\n" + PRELUDE + """
define "Bad unit": Qty('q-badunit')
"""
BAD_UNIT_BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"resource": {"resourceType": "Patient", "id": "p2"}},
    {"resource": _obs("q-badunit", valueQuantity={"value": 2, "unit": "tablets"})},
]}


# -- fixtures ----------------------------------------------------------------------------------

def _translate(tr: Translator, cql: str) -> Translation:
    t = tr.translate(cql)
    assert t.ok, "\n".join(m.format(t.library) for m in t.errors)
    return t


@pytest.fixture(scope="module")
def translated() -> Iterator[dict[str, Translation]]:
    tr = Translator([RULES])
    try:
        out = {"FHIRHelpers": _translate(tr, FHIRHELPERS_CQL.read_text(encoding="utf-8"))}
        for cql in (MAIN, IMPLICIT, BAD_UNIT):
            t = _translate(tr, cql)
            assert t.library
            out[t.library] = t
        yield out
    finally:
        tr.close()


@pytest.fixture(scope="module")
def engine(translated: dict[str, Translation]) -> Iterator[Engine]:
    libs = {name: t.elm for name, t in translated.items() if t.elm is not None}
    with Engine(libs, pool_size=1, timeout=30.0) as eng:
        yield eng


@pytest.fixture(scope="module")
def main(engine: Engine) -> dict[str, Any]:
    return engine.evaluate(BUNDLE, ["FHIRHelpersTest"], AT)["FHIRHelpersTest"]


@pytest.fixture(scope="module")
def implicit(engine: Engine) -> dict[str, Any]:
    return engine.evaluate(BUNDLE, ["FHIRHelpersImplicit"], AT)["FHIRHelpersImplicit"]


def _q(value: str, unit: str) -> Quantity:
    return Quantity(Decimal(value), unit)


# -- the library itself ------------------------------------------------------------------------

def test_translates_without_warnings(translated: dict[str, Translation]) -> None:
    t = translated["FHIRHelpers"]
    assert (t.library, t.version) == ("FHIRHelpers", "4.0.1")
    assert t.warnings == []


def _conversions() -> set[tuple[str, str]]:
    root = ET.parse(MODELINFO).getroot()
    ns = {"m": "urn:hl7-org:elm-modelinfo:r1"}
    return {(c.get("functionName", "").removeprefix("FHIRHelpers."), c.get("fromType", "").removeprefix("FHIR."))
            for c in root.findall("m:conversionInfo", ns)}


def _functions(elm: dict[str, Any]) -> set[tuple[str, str]]:
    out = set()
    for d in elm["library"]["statements"]["def"]:
        if d.get("type") != "FunctionDef" or len(d.get("operand") or []) != 1:
            continue
        spec = d["operand"][0].get("operandTypeSpecifier") or {}
        out.add((d["name"], str(spec.get("name", "")).removeprefix(FHIR_NS)))
    return out


def test_every_model_info_conversion_has_its_function(translated: dict[str, Translation]) -> None:
    conversions = _conversions()
    assert len(conversions) == 264
    missing = conversions - _functions(translated["FHIRHelpers"].elm or {})
    assert missing == set()


def test_generated_block_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_fhirhelpers", RULES / "tools" / "gen_fhirhelpers.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = FHIRHELPERS_CQL.read_text(encoding="utf-8")
    assert gen.render(text) == text, "rerun rules/tools/gen_fhirhelpers.py"
    assert gen.missing(text) == []


# -- ToQuantity --------------------------------------------------------------------------------

def test_to_quantity_uses_the_ucum_code_not_the_display_unit(main: dict[str, Any]) -> None:
    assert main["Q ucum"] == _q("7.5", "[IU]/mL")


def test_to_quantity_with_comparator_is_null(main: dict[str, Any]) -> None:
    assert main["Q lt"] is None
    assert main["Q ignoring lt"] == _q("10", "mg")


def test_to_quantity_without_value_is_null(main: dict[str, Any]) -> None:
    assert main["Q novalue"] is None
    assert main["Q absent"] is None  # value carried only as a data-absent-reason extension
    assert main["Q missing"] is None  # the observation has no Quantity at all


def test_to_quantity_unit_outside_ucum(main: dict[str, Any]) -> None:
    assert main["Q nosystem"] == _q("3", "mg")
    assert main["Q othersystem"] == _q("2", "mg")  # the unit text, not the SNOMED code


def test_to_quantity_without_unit_is_unity(main: dict[str, Any]) -> None:
    assert main["Q nounit"] == _q("4", "1")


@pytest.mark.parametrize(("define", "expected"), [
    ("Q years", _q("65", "year")),
    ("Q months", _q("6", "month")),
    ("Q weeks", _q("2", "week")),
    ("Q days", _q("3", "day")),
    ("Q hours", _q("4", "hour")),
    ("Q minutes", _q("5", "minute")),
    ("Q seconds", _q("6", "second")),
    ("Q ms", _q("7", "millisecond")),
    ("Q calendar", _q("8", "week")),
])
def test_to_quantity_duration_codes_become_calendar_units(main: dict[str, Any], define: str, expected: Quantity) -> None:
    assert main[define] == expected


def test_calendar_quantities_compute(main: dict[str, Any]) -> None:
    assert main["Q days = 72 hours"] is True
    assert main["Q calendar unit passthrough"] == "mg"


def test_arbitrary_ucum_units_do_not_compare(main: dict[str, Any]) -> None:
    # Pins an engine limitation, not a FHIRHelpers choice: cql-execution (ucum-lhc) will not
    # compare quantities in UCUM arbitrary units such as [IU], even 7.5 '[IU]/mL' > 5 '[IU]/mL';
    # the comparison is null. Rules on IU-valued labs must compare `.value` (same unit checked).
    assert main["Q IU compared"] is None


def test_invalid_ucum_unit_text_becomes_an_annotation_not_an_engine_error(engine: Engine) -> None:
    # cql-execution throws on a Quantity whose unit is not UCUM, which would fail a whole
    # library over one odd unit. The worker rewrites such a unit as a UCUM annotation before
    # evaluation: the value is kept, the unit matches no rule's unit (so reads as unknown).
    result = engine.evaluate(BAD_UNIT_BUNDLE, ["FHIRHelpersBadUnit"], AT)
    assert result["FHIRHelpersBadUnit"]["Bad unit"] == _q("2", "{tablets}")


# -- ToInterval(Quantity) ----------------------------------------------------------------------

def test_to_interval_of_comparator_quantities(main: dict[str, Any]) -> None:
    assert main["QI lt"] == Interval(None, _q("10", "mg"), True, False)
    assert main["QI le"] == Interval(None, _q("10", "mg"), True, True)
    assert main["QI ge"] == Interval(_q("10", "mg"), None, True, True)
    assert main["QI gt"] == Interval(_q("10", "mg"), None, False, True)
    assert main["QI plain"] == Interval(_q("3", "mg"), _q("3", "mg"), True, True)
    assert main["QI novalue"] is None
    assert main["QI lt contains 9"] is True
    assert main["QI lt contains 10"] is False


# -- ToCode / ToConcept ------------------------------------------------------------------------

SCT_VERSION = "http://snomed.info/sct/900000000000207008/version/20230131"


def test_to_concept_keeps_every_coding_and_the_text(main: dict[str, Any]) -> None:
    assert main["Concept"] == Concept(
        (Code("2345-7", LOINC, None, "Glucose [Mass/volume] in Serum or Plasma"),
         Code("33747003", SCT, SCT_VERSION, None)),
        "Blood glucose",
    )
    assert main["Concept text only"] == Concept((), "Free text only")
    assert main["Concept null"] is None


def test_to_code_keeps_system_version_display(main: dict[str, Any]) -> None:
    assert main["Code first"] == Code("2345-7", LOINC, None, "Glucose [Mass/volume] in Serum or Plasma")
    assert main["Code second"] == Code("33747003", SCT, SCT_VERSION, None)
    assert main["Code null"] is None


# -- ToInterval(Period), ToInterval(Range), ToRatio --------------------------------------------

def test_to_interval_of_closed_period(main: dict[str, Any]) -> None:
    assert main["Period closed"] == Interval(
        CqlDateTime("2020-01-01T10:00:00+02:00"), CqlDateTime("2020-01-31"), True, True)


def test_to_interval_of_period_without_end_is_ongoing(main: dict[str, Any]) -> None:
    assert main["Period no end"] == Interval(CqlDateTime("2020-01-01T10:00:00+02:00"), None, True, True)
    assert main["Period no end: end"] == CqlDateTime("9999-12-31T23:59:59.999+00:00")
    assert main["Period no end contains 2025"] is True


def test_to_interval_of_period_without_start_is_unknown_start(main: dict[str, Any]) -> None:
    assert main["Period no start"] == Interval(None, CqlDateTime("2020-01-31T00:00:00+00:00"), False, True)
    assert main["Period no start: start"] is None
    assert main["Period null"] is None


def test_to_interval_of_range(main: dict[str, Any]) -> None:
    assert main["Range both"] == Interval(_q("1", "mg"), _q("5", "mg"), True, True)
    assert main["Range high only"] == Interval(None, _q("5", "mg"), True, True)
    assert main["Range high only contains 0"] is True
    assert main["Range empty"] is None
    assert main["Range null"] is None


def test_to_ratio(main: dict[str, Any]) -> None:
    # cql-execution builds a `System.Ratio { ... }` instance as a plain tuple (it only special-
    # cases Quantity, Code and Concept), so it decodes as a dict rather than values.Ratio.
    assert main["Ratio"] == {"numerator": _q("1", "mg"), "denominator": _q("2", "mL")}
    assert main["Ratio numerator"] == _q("1", "mg")
    assert main["Ratio denominator"] == _q("2", "mL")
    assert main["Ratio null"] is None


# -- primitives --------------------------------------------------------------------------------

def test_to_datetime(main: dict[str, Any]) -> None:
    assert main["DateTime offset"] == CqlDateTime("2020-01-01T10:00:00+02:00")
    assert main["DateTime instant"] == CqlDateTime("2020-01-02T03:04:05.123+00:00")
    assert main["DateTime null"] is None


def test_to_datetime_keeps_partial_precision(main: dict[str, Any]) -> None:
    assert main["DateTime month"] == CqlDateTime("2020-03")
    assert main["DateTime month precision"] == 2020
    assert main["DateTime month day"] is None


def test_to_date_and_time(main: dict[str, Any]) -> None:
    assert main["Date"] == CqlDate("1970-05-06")
    assert main["Time"] == CqlTime("10:11:12")


def test_to_boolean(main: dict[str, Any]) -> None:
    assert main["Boolean true"] is True
    assert main["Boolean false"] is False
    assert main["Boolean absent"] is None
    assert main["Boolean patient active"] is True
    assert main["Boolean patient deceased"] is False


def test_to_decimal_and_integer(main: dict[str, Any]) -> None:
    assert main["Decimal"] == Decimal("7.5")
    assert main["Decimal absent"] is None
    assert main["Integer"] == 42 and not isinstance(main["Integer"], bool)
    assert main["Integer absent"] is None


def test_to_string_of_primitives(main: dict[str, Any]) -> None:
    assert main["String"] == "normal"
    assert main["String of code subtype"] == "2345-7"
    assert main["String of uri"] == LOINC
    assert main["String of xhtml"] == '<div xmlns="http://www.w3.org/1999/xhtml">hi</div>'
    assert main["String absent"] is None


def test_to_string_of_code_types(main: dict[str, Any]) -> None:
    assert main["String of ObservationStatus"] == "preliminary"
    assert main["String of AdministrativeGender"] == "female"
    assert main["String of NarrativeStatus"] == "generated"


# -- implicit conversions by the translator ----------------------------------------------------

def _helper_calls(elm: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "FunctionRef" and node.get("libraryName") == "FHIRHelpers":
                found.add(node["name"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(elm["library"]["statements"])
    return found


def test_translator_inserts_fhirhelpers_conversions(translated: dict[str, Translation]) -> None:
    calls = _helper_calls(translated["FHIRHelpersImplicit"].elm or {})
    assert {"ToString", "ToConcept", "ToCode", "ToDate", "ToBoolean", "ToQuantity", "ToDateTime",
            "ToInterval", "ToInteger"} <= calls


def test_implicit_conversions_evaluate(implicit: dict[str, Any]) -> None:
    assert implicit["Status equals final"] is True
    assert implicit["Status equals final (preliminary)"] is False
    final_ids = {o.json["id"] for o in implicit["Final observations"]}
    assert "cc" in final_ids and "status-prelim" not in final_ids
    assert implicit["Code equivalent"] is True
    assert implicit["Coding in code list"] is True
    assert implicit["Gender is female"] is True
    assert implicit["Born before 1980"] is True
    assert implicit["Active"] is True
    assert implicit["Quantity greater"] is True
    assert implicit["Quantity in g/L"] is True
    assert implicit["Comparator quantity greater"] is None  # `<10` is not a plain quantity
    assert implicit["Effective after"] is True
    assert implicit["Issued before"] is True
    assert implicit["During period"] is True
    assert implicit["In range"] is True
    assert implicit["Integer plus one"] == 43
    assert implicit["Boolean and"] is True
    assert implicit["String concat"] == "normal!"
