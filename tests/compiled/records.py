"""Generated patient records for the differential test of the two CQL engines.

Why a generator of its own (not cds.synthetic): the synthetic patients are meant to be
clinically coherent; these are meant to reach the corners where two engines could disagree.
Every record is a FHIR Bundle drawn, deterministically from a seed, out of:

- every code the libraries retrieve by (so every retrieve in the ELM returns something) and
  every code written anywhere in them (medication ingredients, vaccines, value codes), plus
  codes no rule knows, text-only concepts, several codings, the right code in the wrong system;
- values: quantities on and around the rules' thresholds, in the units the rules convert and
  in odd, unknown and invalid units, with comparators; strings, codes, booleans, nulls;
- times in many offsets (Z, +08:00, -05:00, +05:30) and precisions (year .. milliseconds),
  instants, periods with a missing end, dates on window boundaries and in the future;
- medications with several, overlapping, adjacent and open-ended periods of one ingredient,
  doses per day / per week / per hour, in mg, g, ug and tablets;
- statuses the rules accept and those they must ignore (entered-in-error, cancelled ...);
- patients of every age (children, boundary birthdays), partial and absent birth dates.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cds.engine.elm import CodeKey, TypeRequirement

UCUM = "http://unitsofmeasure.org"
FHIR_TYPES = ("Observation", "Condition", "MedicationRequest", "MedicationStatement", "Procedure", "Immunization")
OFFSETS = ("Z", "+00:00", "+08:00", "-05:00", "+05:30", "-03:00", "+14:00")
UNITS = ("mg/dL", "umol/L", "µmol/L", "mmol/L", "g/L", "g/dL", "10*9/L", "10*3/uL", "/uL", "{cells}/uL",
         "%", "U/L", "[IU]/L", "[IU]/mL", "IU/mL", "mL/min/{1.73_m2}", "mL/min/1.73m2", "mL/min", "mL/s",
         "{score}", "1", "kg", "g", "[lb_av]", "cm", "m", "[in_i]", "mm[Hg]", "{copies}/mL", "/min",
         "tablets", "mg/24hr", "", "foo bar", "mg")
VALUES = (0, 0.5, 1, 1.2, 2, 2.5, 3, 4, 5, 6, 7.5, 8, 10, 12, 15, 17.1, 18, 20, 20.5, 25, 29.9, 30, 30.1, 35,
          40, 45, 50, 55, 59, 60, 61, 65, 70, 88.4, 90, 92, 100, 120, 150, 200, 1000, 5000, -1, 0.001, 99999)
COMPARATORS = ("<", "<=", ">", ">=")
VALUE_CODES = (("http://snomed.info/sct", "10828004"), ("http://snomed.info/sct", "260385009"),
               ("http://snomed.info/sct", "260373001"), ("http://snomed.info/sct", "260415000"),
               ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "POS"),
               ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "NEG"))
INTERPRETATIONS = ("H", "L", "N", "A", "POS", "NEG", "HH", "LL", "DET", "ND")
VALUE_STRINGS = ("positive", "negative", "Detected", "not detected", "<20", "> 100", "reactive", "1:640", "")
OBS_STATUS = ("final", "final", "final", "amended", "corrected", "preliminary", "registered", "cancelled",
              "entered-in-error", "unknown", None)
CLINICAL = ("active", "active", "recurrence", "relapse", "inactive", "remission", "resolved", None)
VERIFICATION = ("confirmed", "confirmed", "provisional", "differential", "unconfirmed", "refuted",
                "entered-in-error", None)
MED_STATUS = ("active", "active", "completed", "stopped", "on-hold", "cancelled", "draft", "entered-in-error",
              "unknown", "intended", "not-taken", None)
PROC_STATUS = ("completed", "completed", "in-progress", "not-done", "entered-in-error", "stopped", None)
IMM_STATUS = ("completed", "completed", "not-done", "entered-in-error", None)
GENDERS = ("female", "male", "other", "unknown", None)


ValueSets = Mapping[str, Mapping[str, Sequence[Mapping[str, str]]]]


def code_pools(libraries: Mapping[str, Mapping[str, Any]], value_sets: ValueSets | None = None
               ) -> dict[str, list[CodeKey]]:
    """Every code written in the libraries (Code selectors and code definitions), by system URL,
    plus every code of the value sets given (url -> version -> codes)."""
    pools: dict[str, set[CodeKey]] = {}

    def add(system: str | None, code: str | None) -> None:
        if system and code:
            pools.setdefault(system, set()).add(CodeKey(system, code))

    for elm in libraries.values():
        lib = elm["library"]
        systems = {d["name"]: d["id"] for d in (lib.get("codeSystems") or {}).get("def") or []}
        for d in (lib.get("codes") or {}).get("def") or []:
            add(systems.get(d.get("codeSystem", {}).get("name")), d.get("id"))
        stack: list[Any] = [lib.get("statements")]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("type") == "Code" and isinstance(node.get("system"), dict):
                    add(systems.get(node["system"].get("name")), node.get("code"))
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    for versions in (value_sets or {}).values():
        for codes in versions.values():
            for c in codes:
                add(c.get("system"), c.get("code"))
    return {system: sorted(codes) for system, codes in sorted(pools.items())}


class RecordGenerator:
    """`record(i)` is the i-th record (a Bundle); the same seed gives the same records."""

    def __init__(self, requirements: Mapping[str, TypeRequirement], pools: Mapping[str, list[CodeKey]],
                 at: datetime, seed: int = 14) -> None:
        self.requirements = requirements
        self.pools = pools
        self.at = at
        self.seed = seed
        self.all_codes = sorted({c for codes in pools.values() for c in codes})
        # Codes by resource type: those its retrieves filter on, else every code we know.
        self.by_type: dict[str, list[CodeKey]] = {}
        for rtype in FHIR_TYPES:
            req = requirements.get(rtype)
            self.by_type[rtype] = sorted(req.codes) if req is not None and req.codes else self.all_codes
        self.rxnorm = pools.get("http://www.nlm.nih.gov/research/umls/rxnorm") or self.all_codes
        self.cvx = pools.get("http://hl7.org/fhir/sid/cvx") or self.all_codes

    # -- pieces ---------------------------------------------------------------------------

    def moment(self, r: random.Random, *, spread_days: float = 800) -> str:
        """A FHIR dateTime around the evaluation time, in a random precision and offset."""
        choice = r.random()
        days: float
        if choice < 0.15:  # window boundaries: 7, 28, 30, 90, 180, 365 days, +- a day
            days = r.choice((7, 28, 30, 56, 90, 180, 183, 365, 366, 730)) + r.choice((-1, 0, 0, 1))
        elif choice < 0.2:
            days = -r.uniform(0, 60)  # the future
        else:
            days = r.uniform(0, spread_days)
        when = self.at - timedelta(days=days, seconds=r.randint(0, 86399))
        offset = r.choice(OFFSETS)
        precision = r.choices(("year", "month", "day", "minute", "second", "ms"), (1, 2, 6, 2, 8, 3))[0]
        if precision == "year":
            return f"{when.year:04d}"
        if precision == "month":
            return f"{when.year:04d}-{when.month:02d}"
        if precision == "day":
            return when.date().isoformat()
        if offset not in ("Z", "+00:00"):
            sign = 1 if offset[0] == "+" else -1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            when = when + sign * timedelta(hours=hours, minutes=minutes)
        text = when.strftime("%Y-%m-%dT%H:%M" if precision == "minute" else "%Y-%m-%dT%H:%M:%S")
        if precision == "minute":  # FHIR needs seconds; a sender that omits them is an odd shape
            text += ":00"
        if precision == "ms":
            text += f".{r.randint(0, 999):03d}"
        return text + offset

    def concept(self, r: random.Random, pool: list[CodeKey]) -> dict[str, Any]:
        kind = r.random()
        if kind < 0.06:
            return {"text": r.choice(("lupus", "unknown", "free text only", "SLE flare"))}
        if kind < 0.12:
            return {"coding": [{"system": "http://example.org/local", "code": f"X{r.randint(1, 999)}",
                                "display": "a code no rule knows"}]}
        first = r.choice(pool)
        codings = [{"system": first.system, "code": first.code}]
        if kind < 0.16:  # the right code in the wrong system
            codings[0]["system"] = r.choice(("http://snomed.info/sct", "http://loinc.org", "http://hl7.org/fhir/sid/icd-10"))
        if r.random() < 0.15:
            extra = r.choice(self.all_codes)
            codings.append({"system": extra.system, "code": extra.code})
            r.shuffle(codings)
        if r.random() < 0.3:
            codings[0]["display"] = r.choice(("Display", "système", "μ-test"))
        out: dict[str, Any] = {"coding": codings}
        if r.random() < 0.2:
            out["text"] = "as recorded"
        return out

    def quantity(self, r: random.Random, units: tuple[str, ...] = UNITS) -> dict[str, Any]:
        q: dict[str, Any] = {}
        if r.random() < 0.95:
            value = r.choice(VALUES)
            if r.random() < 0.3:
                value = round(value * r.uniform(0.5, 1.5), r.choice((0, 1, 2, 3)))
            q["value"] = value
        unit = r.choice(units)
        shape = r.random()
        if shape < 0.6:
            q.update({"unit": unit, "system": UCUM, "code": unit})
        elif shape < 0.75:
            q["unit"] = unit
        elif shape < 0.85:
            q.update({"system": UCUM, "code": unit})
        elif shape < 0.9:
            q.update({"unit": unit, "system": "http://example.org/units", "code": unit})
        if r.random() < 0.12:
            q["comparator"] = r.choice(COMPARATORS)
        return q

    def period(self, r: random.Random, start: datetime | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if start is None or r.random() < 0.5:
            out["start"] = self.moment(r)
        else:
            out["start"] = start.isoformat().replace("+00:00", "Z")
        if r.random() < 0.75:
            out["end"] = self.moment(r, spread_days=400)
        return out

    # -- resources ------------------------------------------------------------------------

    def patient(self, r: random.Random, pid: str) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "Patient", "id": pid}
        kind = r.random()
        if kind < 0.1:
            pass  # no birth date
        else:
            years = r.choice((2, 5, 7, 11, 12, 14, 17, 18, 19, 25, 40, 60, 64, 65, 66, 70, 75, 80, 90))
            born = self.at - timedelta(days=365.25 * years + r.choice((-1, 0, 1, 40, -40, 180)))
            if kind < 0.15:
                res["birthDate"] = f"{born.year:04d}"
            elif kind < 0.22:
                res["birthDate"] = f"{born.year:04d}-{born.month:02d}"
            else:
                res["birthDate"] = born.date().isoformat()
        gender = r.choice(GENDERS)
        if gender:
            res["gender"] = gender
        return res

    def observation(self, r: random.Random, pid: str, rid: str) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "Observation", "id": rid,
                               "code": self.concept(r, self.by_type["Observation"]),
                               "subject": {"reference": f"Patient/{pid}"}}
        status = r.choice(OBS_STATUS)
        if status:
            res["status"] = status
        when = r.random()
        if when < 0.7:
            res["effectiveDateTime"] = self.moment(r)
        elif when < 0.8:
            res["effectivePeriod"] = self.period(r)
        elif when < 0.88:
            res["effectiveInstant"] = self.moment(r).split("T")[0] + "T08:30:00.000Z"
        if r.random() < 0.1:
            res["issued"] = self.moment(r)
        value = r.random()
        if value < 0.65:
            res["valueQuantity"] = self.quantity(r)
        elif value < 0.72:
            res["valueString"] = r.choice(VALUE_STRINGS)
        elif value < 0.8:
            system, code = r.choice(VALUE_CODES)
            res["valueCodeableConcept"] = {"coding": [{"system": system, "code": code}]}
        elif value < 0.84:
            res["valueBoolean"] = r.random() < 0.5
        elif value < 0.87:
            res["valueInteger"] = r.choice((0, 1, 2, 4, 6, 10, 20))
        if r.random() < 0.3:
            rng: dict[str, Any] = {"high": self.quantity(r)}
            if r.random() < 0.3:
                rng["low"] = self.quantity(r)
            res["referenceRange"] = [rng]
        if r.random() < 0.25:
            res["interpretation"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                                  "code": r.choice(INTERPRETATIONS)}]}]
        if r.random() < 0.1:
            res["component"] = [{"code": self.concept(r, self.by_type["Observation"]),
                                 "valueQuantity": self.quantity(r, ("mm[Hg]", "mmHg", "%", "{score}"))}
                                for _ in range(r.randint(1, 3))]
        if r.random() < 0.1:
            res["category"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                            "code": r.choice(("laboratory", "survey", "vital-signs", "exam"))}]}]
        return res

    def condition(self, r: random.Random, pid: str, rid: str) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "Condition", "id": rid,
                               "code": self.concept(r, self.by_type["Condition"]),
                               "subject": {"reference": f"Patient/{pid}"}}
        clinical = r.choice(CLINICAL)
        if clinical:
            res["clinicalStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                 "code": clinical}]}
        verification = r.choice(VERIFICATION)
        if verification:
            res["verificationStatus"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                     "code": verification}]}
        onset = r.random()
        if onset < 0.55:
            res["onsetDateTime"] = self.moment(r, spread_days=6000)
        elif onset < 0.65:
            res["onsetPeriod"] = self.period(r)
        elif onset < 0.7:
            res["onsetAge"] = {"value": r.randint(1, 70), "unit": "a", "system": UCUM, "code": "a"}
        elif onset < 0.74:
            res["onsetString"] = "childhood"
        if r.random() < 0.6:
            res["recordedDate"] = self.moment(r, spread_days=6000)
        if r.random() < 0.15:
            res["abatementDateTime"] = self.moment(r, spread_days=300)
        return res

    def dosage(self, r: random.Random, bounds: dict[str, Any] | None) -> dict[str, Any]:
        repeat: dict[str, Any] = {}
        if r.random() < 0.8:
            repeat["frequency"] = r.choice((1, 1, 2, 3, 4))
            repeat["period"] = r.choice((1, 1, 1, 0.5, 2, 7, 12))
            repeat["periodUnit"] = r.choice(("d", "d", "d", "h", "wk", "mo"))
        if bounds is not None:
            repeat["boundsPeriod"] = bounds
        out: dict[str, Any] = {"timing": {"repeat": repeat}}
        if r.random() < 0.85:
            dose = self.quantity(r, ("mg", "mg", "mg", "g", "ug", "mcg", "mg/kg", "tablets", "{tbl}", "mL"))
            if r.random() < 0.5:
                dose["value"] = r.choice((1, 2.5, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 60, 100, 250, 500, 750, 1000))
            out["doseAndRate"] = [{"doseQuantity": dose}] if r.random() < 0.92 else [{"doseRange": {
                "low": self.quantity(r, ("mg",)), "high": self.quantity(r, ("mg",))}}]
        return out

    def medication(self, r: random.Random, pid: str, rid: str, statement: bool, ingredient: CodeKey,
                   start: datetime) -> dict[str, Any]:
        rtype = "MedicationStatement" if statement else "MedicationRequest"
        res: dict[str, Any] = {"resourceType": rtype, "id": rid, "subject": {"reference": f"Patient/{pid}"}}
        status = r.choice(MED_STATUS)
        if status:
            res["status"] = status
        if r.random() < 0.08:
            res["medicationReference"] = {"reference": f"Medication/{rid}-med"}
        elif r.random() < 0.08:
            res["medicationCodeableConcept"] = self.concept(r, self.rxnorm)
        else:
            res["medicationCodeableConcept"] = {"coding": [{"system": ingredient.system, "code": ingredient.code}]}
        bounds = self.period(r, start) if r.random() < 0.85 else None
        if statement:
            if bounds is not None and r.random() < 0.8:
                res["effectivePeriod"] = bounds
            elif r.random() < 0.7:
                res["effectiveDateTime"] = self.moment(r)
            if r.random() < 0.8:
                res["dosage"] = [self.dosage(r, None) for _ in range(r.choice((1, 1, 2)))]
        else:
            res["intent"] = r.choice(("order", "order", "plan", "proposal"))
            if r.random() < 0.85:
                res["authoredOn"] = self.moment(r)
            if r.random() < 0.9:
                res["dosageInstruction"] = [self.dosage(r, bounds) for _ in range(r.choice((1, 1, 2)))]
        return res

    def procedure(self, r: random.Random, pid: str, rid: str) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "Procedure", "id": rid,
                               "code": self.concept(r, self.by_type["Procedure"]),
                               "subject": {"reference": f"Patient/{pid}"}}
        status = r.choice(PROC_STATUS)
        if status:
            res["status"] = status
        when = r.random()
        if when < 0.65:
            res["performedDateTime"] = self.moment(r, spread_days=3000)
        elif when < 0.85:
            res["performedPeriod"] = self.period(r)
        elif when < 0.9:
            res["performedString"] = "last year"
        return res

    def immunization(self, r: random.Random, pid: str, rid: str) -> dict[str, Any]:
        res: dict[str, Any] = {"resourceType": "Immunization", "id": rid, "vaccineCode": self.concept(r, self.cvx),
                               "patient": {"reference": f"Patient/{pid}"}}
        status = r.choice(IMM_STATUS)
        if status:
            res["status"] = status
        if r.random() < 0.85:
            res["occurrenceDateTime"] = self.moment(r, spread_days=500)
        else:
            res["occurrenceString"] = "as a child"
        return res

    # -- records --------------------------------------------------------------------------

    def record(self, i: int) -> dict[str, Any]:
        r = random.Random(self.seed * 1_000_003 + i)
        pid = f"gen-{i}"
        resources: list[dict[str, Any]] = [self.patient(r, pid)]
        n = r.choice((0, 1, 2, 3, 4, 5, 6, 8, 10, 14))
        for k in range(n):
            rid = f"{pid}-{k}"
            kind = r.choices(FHIR_TYPES, (40, 22, 12, 8, 10, 8))[0]
            if kind == "Observation":
                resources.append(self.observation(r, pid, rid))
            elif kind == "Condition":
                resources.append(self.condition(r, pid, rid))
            elif kind in ("MedicationRequest", "MedicationStatement"):
                # a course: one ingredient, 1-4 requests or statements, overlapping or not
                ingredient = r.choice(self.rxnorm)
                start = self.at - timedelta(days=r.uniform(0, 700))
                for j in range(r.choice((1, 1, 2, 3, 4))):
                    start = start + timedelta(days=r.choice((-20, 0, 1, 14, 30, 90)))
                    statement = kind == "MedicationStatement" or r.random() < 0.3
                    resources.append(self.medication(r, pid, f"{rid}-{j}", statement, ingredient, start))
            elif kind == "Procedure":
                resources.append(self.procedure(r, pid, rid))
            else:
                resources.append(self.immunization(r, pid, rid))
        if r.random() < 0.003:  # two Patient resources: both engines must refuse alike
            resources.append(self.patient(r, pid + "-twin"))
        r.shuffle(resources)
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": res} for res in resources]}

    def records(self, start: int, count: int) -> list[dict[str, Any]]:
        return [self.record(i) for i in range(start, start + count)]

    def execution_time(self, i: int) -> str:
        """Evaluation times vary too: offsets, a DST change, the last millisecond of a year."""
        times = ("2026-11-26T09:00:00.000Z", "2026-03-08T07:30:00.000-05:00", "2026-12-31T23:59:59.999+08:00",
                 "2027-01-01T00:00:00.000Z", "2026-06-15T12:00:00.000+05:30")
        return times[i % len(times)]


def covered(records: Iterable[Mapping[str, Any]], requirements: Mapping[str, TypeRequirement]
            ) -> dict[str, set[CodeKey]]:
    """Of each retrieve's codes, those not present in any of `records` (empty sets: all covered)."""
    seen: set[tuple[str, str, str]] = set()
    types: set[str] = set()
    for bundle in records:
        for entry in bundle["entry"]:
            res = entry["resource"]
            types.add(res["resourceType"])
            for key in ("code", "vaccineCode", "medicationCodeableConcept"):
                for c in (res.get(key) or {}).get("coding") or []:
                    seen.add((res["resourceType"], c.get("system"), c.get("code")))
    missing: dict[str, set[CodeKey]] = {}
    for rtype, req in requirements.items():
        if req.codes is None:
            missing[rtype] = set() if rtype in types else {CodeKey("*", "*")}
        else:
            missing[rtype] = {c for c in req.codes if (rtype, c.system, c.code) not in seen}
    return missing


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
