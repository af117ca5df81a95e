"""One record-builder vocabulary for every trial test, and the helpers to evaluate and read results.

A record is built from *parts*: each part is a function `(pid, at) -> resource | [resources]`,
so a case reads as the chart would ("a woman of 34, ALT 150 U/L 14 days ago, pneumonia since 3
days, ceftriaxone since 3 days") and the same parts make records for any patient id and
evaluation time:

    record("p1", at, woman(34), lab("1742-6", 150, "U/L", 14, ref_high=35), cond("SNOMEDCT", "233604007", 3))

Times: a number is days before `at`; a date or datetime is used as it is; None leaves the
element out. Ids: `name=` gives `<pid>-<name>` (stable, for evidence checks; a Chart made with
`ids="plain"` uses the name itself); else generated.
Codes name their system by the short names of cds.synthetic.codes (LOINC, SNOMEDCT, ICD10,
ICD10CM, RxNorm, CVX, Local) or a full URI. `Chart(pid, at)` gives the same builders bound to
one patient, for modules that write resources directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Any

from cds.engine import Engine
from cds.synthetic import fhir as F
from cds.synthetic.trial_records import NEG, POS, ago, born  # the synthetic records' own, one definition

Resource = dict[str, Any]
When = float | int | date | datetime | None
Part = Callable[[str, datetime], Resource | list[Resource]]


def when_of(at: datetime, when: When) -> datetime | date | None:
    """A number is days before `at`; dates and datetimes are taken as they are."""
    if when is None or isinstance(when, (date, datetime)):
        return when
    return ago(at, float(when))


def _rid(pid: str, name: str | None, plain: bool = False) -> str | None:
    return None if name is None else (name if plain else f"{pid}-{name}")


# -- builders bound to one patient ----------------------------------------------------------------

class Chart:
    """The builders for one patient id and evaluation time (each returns a resource)."""

    def __init__(self, pid: str, at: datetime, ids: str = "prefixed") -> None:
        self.pid, self.at, self.plain = pid, at, ids == "plain"

    def _id(self, name: str | None) -> str | None:
        return _rid(self.pid, name, self.plain)

    def patient(self, birth: date | None, gender: str | None, name: str = "Test") -> Resource:
        return F.patient(self.pid, birth, gender, name=name)

    def aged(self, years: float, gender: str | None) -> Resource:
        return F.patient(self.pid, born(self.at, years), gender)

    def obs(self, code: str, when: When, name: str | None = None, system: str = "LOINC", **kw: Any) -> Resource:
        return F.observation(self.pid, system, code, when_of(self.at, when), rid=self._id(name), **kw)

    def lab(self, code: str, value: float, unit: str, when: When, name: str | None = None,
            ref_high: float | None = None, **kw: Any) -> Resource:
        return self.obs(code, when, name, value=value, unit=unit, ref_high=ref_high, **kw)

    def score(self, code: str, value: float, when: When, name: str | None = None) -> Resource:
        return self.obs(code, when, name, system="Local", value=value, unit="{score}", category="survey")

    def pos(self, code: str, when: When, name: str | None = None) -> Resource:
        return self.obs(code, when, name, value_code=POS, interpretation="POS")

    def neg(self, code: str, when: When, name: str | None = None) -> Resource:
        return self.obs(code, when, name, value_code=NEG, interpretation="NEG")

    def cond(self, system: str, code: str, when: When, name: str | None = None, **kw: Any) -> Resource:
        return F.condition(self.pid, system, code, when_of(self.at, when), rid=self._id(name), **kw)

    def proc(self, system: str, code: str, when: When, name: str | None = None, **kw: Any) -> Resource:
        return F.procedure(self.pid, system, code, when_of(self.at, when), rid=self._id(name), **kw)

    def medrq(self, code: str, start: When, end: When, name: str | None = None, **kw: Any) -> Resource:
        return F.medication_request(self.pid, code, when_of(self.at, start), when_of(self.at, end),  # type: ignore[arg-type]
                                    rid=self._id(name), **kw)

    def medst(self, code: str, start: When, end: When, name: str | None = None, **kw: Any) -> Resource:
        return F.medication_statement(self.pid, code, when_of(self.at, start), when_of(self.at, end),  # type: ignore[arg-type]
                                      rid=self._id(name), **kw)

    def vaccine(self, cvx: str, when: When, name: str | None = None, **kw: Any) -> Resource:
        return F.immunization(self.pid, cvx, when_of(self.at, when), rid=self._id(name), **kw)


# -- the same builders as parts (applied later to a patient id and time) ------------------------------

def _part(method: str, *args: Any, **kw: Any) -> Part:
    return lambda pid, at: getattr(Chart(pid, at), method)(*args, **kw)


def person(birth: date | None, gender: str | None) -> Part:
    return _part("patient", birth, gender)


def woman(age: float = 34) -> Part:
    return _part("aged", age, "female")


def man(age: float = 34) -> Part:
    return _part("aged", age, "male")


def girl(age: float = 12) -> Part:
    return _part("aged", age, "female")


def boy(age: float = 12) -> Part:
    return _part("aged", age, "male")


def obs(code: str, when: When, system: str = "LOINC", name: str | None = None, **kw: Any) -> Part:
    return _part("obs", code, when, name, system, **kw)


def lab(code: str, value: float, unit: str, when: When, ref_high: float | None = None, name: str | None = None,
        **kw: Any) -> Part:
    return _part("lab", code, value, unit, when, name, ref_high, **kw)


def score(code: str, value: float, when: When, name: str | None = None) -> Part:
    return _part("score", code, value, when, name)


def pos(code: str, when: When, name: str | None = None) -> Part:
    return _part("pos", code, when, name)


def neg(code: str, when: When, name: str | None = None) -> Part:
    return _part("neg", code, when, name)


def cond(system: str, code: str, when: When, name: str | None = None, **kw: Any) -> Part:
    return _part("cond", system, code, when, name, **kw)


def proc(system: str, code: str, when: When, name: str | None = None, **kw: Any) -> Part:
    return _part("proc", system, code, when, name, **kw)


def medrq(code: str, start: When, end: When, name: str | None = None, **kw: Any) -> Part:
    return _part("medrq", code, start, end, name, **kw)


def medst(code: str, start: When, end: When, name: str | None = None, **kw: Any) -> Part:
    return _part("medst", code, start, end, name, **kw)


def vaccine(cvx: str, when: When, name: str | None = None, **kw: Any) -> Part:
    return _part("vaccine", cvx, when, name, **kw)


def raw(resource: Resource | Callable[[str, datetime], Resource]) -> Part:
    """A hand-made resource (or a function of pid and time making one) as a part."""
    return resource if callable(resource) else (lambda pid, at: resource)


def changed(part: Part, change: Callable[[Resource], None]) -> Part:
    """A part whose resource is edited after it is built (odd shapes real EHRs send)."""
    def build(pid: str, at: datetime) -> Resource | list[Resource]:
        made = part(pid, at)
        for r in made if isinstance(made, list) else [made]:
            change(r)
        return made
    return build


# -- records ---------------------------------------------------------------------------------------

def record(pid: str, at: datetime, *parts: Part | Resource | Iterable[Resource]) -> list[Resource]:
    """The resources of the parts, in order (resources and lists of resources are taken as they are)."""
    out: list[Resource] = []
    for p in parts:
        made = p(pid, at) if callable(p) else p
        if isinstance(made, dict):
            out.append(made)
        else:
            out.extend(made)
    return out


def without(resources: Sequence[Resource], *ids: str) -> list[Resource]:
    """`resources` less those with these ids."""
    return [r for r in resources if r["id"] not in set(ids)]


def replacing(resources: Sequence[Resource], *new: Resource) -> list[Resource]:
    """`resources` with each of `new` replacing the resource of the same id (or added)."""
    ids = {r["id"] for r in new}
    return [r for r in resources if r["id"] not in ids] + list(new)


# -- evaluation and reading results ------------------------------------------------------------------

def evaluate_trial(engine: Engine, trial_id: str, resources: Iterable[dict[str, Any]], at: datetime) -> dict[str, Any]:
    """Every define of the trial's library (raw engine JSON) for a record of `resources`."""
    return engine.evaluate(F.bundle(list(resources)), [trial_id], at).raw[trial_id]


def criterion(engine: Engine, trial_id: str, define: str, resources: Iterable[dict[str, Any]], at: datetime) -> dict[str, Any]:
    """One criterion's result tuple: {"status", "evidence": [...], "missing": [...]}."""
    result = evaluate_trial(engine, trial_id, resources, at)[define]
    assert isinstance(result, dict) and {"status", "evidence", "missing"} <= set(result), result
    return result


def missing_codes(result: dict[str, Any]) -> set[str]:
    return {m["code"] for m in result["missing"]}


def day(ev: dict[str, Any]) -> str | None:
    """The evidence date as YYYY-MM-DD (None when the evidence has no date)."""
    d = ev.get("date")
    return None if d is None else d["value"][:10]


def notes(result: dict[str, Any]) -> str:
    """Every evidence note of a criterion result, joined."""
    return " | ".join(e["note"] or "" for e in result["evidence"])


def ev_for(result: dict[str, Any], reference: str) -> dict[str, Any]:
    """The first evidence item about `reference` (asserts there is one)."""
    found = [e for e in result["evidence"] if e["reference"] == reference]
    assert found, (reference, result["evidence"])
    return found[0]
