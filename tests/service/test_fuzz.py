"""Bad input, property-based (hypothesis): well over 1,000 generated malformed hook and feedback
bodies, in-process against the running app. Every answer is a 2xx/4xx with a JSON body,
never a 5xx: random JSON, wrong types, missing fields, huge strings, wrong hook names,
prefetch of the wrong shape, invalid UTF-8, lone surrogates, deep nesting."""

from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cds.hooks.models import CardsResponse

from .conftest import FEEDBACK_PATH, HOOK_PATH, NO_SLE, OTHER, Service, hook_body, no_sle_resources, other_resources

EXAMPLES = 1100

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
huge_strings = st.sampled_from([10_000, 300_000, 1_000_000]).map(lambda n: "\u00e9" * n)
weird_text = st.one_of(st.text(max_size=60), huge_strings,
                       st.sampled_from(["", " ", "../../etc/passwd", "Patient/x", "a" * 65, "p\n1", "p 1", "✓",
                                        "' OR 1=1 --", "{{context.patientId}}", "\x00"]))
wrong_hooks = st.one_of(st.text(max_size=30), st.sampled_from(["order-select", "PATIENT-VIEW", "patient-view ",
                                                                 "encounter-start", ""]))


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    return out


def _drop(doc: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        target = target.get(key) if isinstance(target.get(key), dict) else {}
    target.pop(path[-1], None)
    return out


HOOK_FIELDS = [("hook",), ("hookInstance",), ("context",), ("context", "patientId"), ("context", "userId"),
               ("prefetch",), ("fhirServer",), ("fhirAuthorization",), ("fhirAuthorization", "access_token"),
               ("fhirAuthorization", "token_type"), ("fhirAuthorization", "expires_in"), ("prefetch", "patient")]
FEEDBACK_FIELDS = [("card",), ("outcome",), ("outcomeTimestamp",), ("acceptedSuggestions",), ("overrideReason",),
                   ("overrideReason", "reason"), ("overrideReason", "userComment")]


def _bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@st.composite
def hook_cases(draw: st.DrawFn, prefetch: dict[str, Any]) -> bytes:
    # No fhirServer in the base: a valid-looking body stops at 412 before any CQL runs.
    base = hook_body(NO_SLE, prefetch={"patient": prefetch["patient"]})
    kind = draw(st.sampled_from(["replace", "drop", "hook-name", "text", "prefetch", "auth"]))
    if kind == "replace":
        return _bytes(_set(base, draw(st.sampled_from(HOOK_FIELDS)), draw(json_values)))
    if kind == "drop":
        return _bytes(_drop(base, draw(st.sampled_from(HOOK_FIELDS))))
    if kind == "hook-name":
        return _bytes({**base, "hook": draw(wrong_hooks)})
    if kind == "text":
        field = draw(st.sampled_from([("hookInstance",), ("context", "patientId"), ("fhirServer",),
                                      ("context", "encounterId")]))
        return _bytes(_set(base, field, draw(weird_text)))
    if kind == "auth":
        auth = draw(st.fixed_dictionaries({}, optional={
            "access_token": weird_text, "token_type": st.sampled_from(["Bearer", "bearer", "MAC", ""]) | json_values,
            "expires_in": json_values, "scope": weird_text, "subject": weird_text}))
        server = draw(st.sampled_from([None, "http://127.0.0.1:9/fhir", "ftp://x", "javascript:alert(1)", ""]))
        return _bytes({**base, "fhirAuthorization": auth, **({"fhirServer": server} if server is not None else {})})
    # prefetch of the wrong shape, on top of the complete prefetch of a patient without SLE
    full = copy.deepcopy(prefetch)
    key = draw(st.sampled_from(sorted(full) + ["unexpected-key"]))
    patient_pick = draw(st.sampled_from([r for r in other_resources() if r["resourceType"] == "Patient"]))
    shape = draw(st.sampled_from(["json", "entries", "entry-junk", "wrong-type", "no-id", "other-patient", "outcome",
                                  "link-junk", "not-object", "bad-fields"]))
    if shape == "bad-fields":  # the right type and id, FHIR elements of the wrong shape: reaches the engine
        rtype = {"patient": "Patient"}.get(key) or next(
            (e["resource"]["resourceType"] for e in (full.get(key) or {}).get("entry", [])), "Condition")
        resource = {"resourceType": rtype, "id": f"bad-{rtype.lower()}",
                    **({} if rtype == "Patient" else {"subject": {"reference": f"Patient/{NO_SLE}"}})}
        if rtype == "Patient":
            resource["id"] = NO_SLE
        for element in draw(st.lists(st.sampled_from(["code", "birthDate", "effectiveDateTime", "valueQuantity",
                                                      "onsetDateTime", "clinicalStatus", "status", "component",
                                                      "gender", "medicationCodeableConcept", "vaccineCode",
                                                      "performedDateTime", "dosage", "extension"]),
                                     min_size=1, max_size=4)):
            resource[element] = draw(json_values)
        if rtype == "Patient":
            full["patient"] = resource
        else:
            full[key] = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": resource}]}
    elif shape == "json":
        full[key] = draw(json_values)
    elif shape == "entries":
        full[key] = {"resourceType": "Bundle", "type": "searchset", "entry": draw(json_values)}
    elif shape == "entry-junk":
        full[key] = {"resourceType": "Bundle", "entry": [{"resource": draw(json_values)}, draw(json_values)]}
    elif shape == "wrong-type":
        rtype = draw(st.sampled_from(["Observation", "Bundle", "Patient", "Foo", ""]) | weird_text)
        full[key] = draw(st.sampled_from([{"resourceType": rtype, "id": "x"},
                                          {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": rtype}}]}]))
    elif shape == "no-id":
        full[key] = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Condition"}}]}
    elif shape == "other-patient":
        full[key] = patient_pick
    elif shape == "outcome":
        full[key] = {"resourceType": "OperationOutcome", "issue": draw(json_values)}
    elif shape == "link-junk":
        full[key] = {"resourceType": "Bundle", "link": draw(json_values), "entry": draw(json_values)}
    else:
        full[key] = draw(st.one_of(st.text(max_size=20), st.integers(), st.lists(st.integers(), max_size=3)))
    return _bytes({**base, "prefetch": full})


@st.composite
def feedback_cases(draw: st.DrawFn) -> bytes:
    item = {"card": "1f7b5a1e-0c1e-4d5e-9a11-2b4a6e0c9a11", "outcome": "overridden",
            "outcomeTimestamp": "2026-11-26T09:00:00Z"}
    kind = draw(st.sampled_from(["replace", "drop", "outcome", "timestamp", "list", "text"]))
    if kind == "replace":
        body = {"feedback": [_set(item, draw(st.sampled_from(FEEDBACK_FIELDS)), draw(json_values))]}
    elif kind == "drop":
        body = {"feedback": [_drop(item, draw(st.sampled_from(FEEDBACK_FIELDS)))]}
    elif kind == "outcome":
        body = {"feedback": [{**item, "outcome": draw(st.sampled_from(["accepted", "rejected", "ignored", ""])
                                                      | st.text(max_size=10))}]}
    elif kind == "timestamp":
        body = {"feedback": [{**item, "outcomeTimestamp": draw(st.text(max_size=40) | st.sampled_from([
            "2026-02-30T00:00:00Z", "2026-11-26", "2026-11-26T09:00:00", "26/11/2026", "9999-12-31T23:59:59+14:00",
            "0000-01-01T00:00:00Z"]))}]}
    elif kind == "list":
        body = {"feedback": draw(st.lists(json_values, max_size=5) | json_values)}
    else:
        field = draw(st.sampled_from([("card",), ("overrideReason", "userComment")]))
        body = {"feedback": [_set(item, field, draw(weird_text))]}
    return _bytes(body)


@st.composite
def raw_cases(draw: st.DrawFn, valid: bytes) -> bytes:
    kind = draw(st.sampled_from(["json", "binary", "bad-utf8", "surrogate", "nested", "truncated"]))
    if kind == "json":
        return _bytes(draw(json_values))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "bad-utf8":
        at = draw(st.integers(0, len(valid)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        return valid[:at] + junk + valid[at:]
    if kind == "surrogate":  # valid JSON, but \ud800 has no UTF-8 form
        return valid.replace(b'"hookInstance": "', b'"hookInstance": "\\ud800', 1).replace(
            b'"card": "', b'"card": "\\udfff', 1)
    if kind == "nested":
        depth = draw(st.sampled_from([50, 5_000, 200_000]))
        inner = b"[" * depth + b"]" * depth
        return draw(st.sampled_from([inner, b'{"hook": ' + inner + b"}", valid[:-1] + b', "x": ' + inner + b"}"]))
    return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]


def test_malformed_bodies_never_get_a_5xx(service: Service) -> None:
    prefetch = service.prefetch(no_sle_resources(), NO_SLE)
    valid_hook = _bytes(hook_body(NO_SLE, prefetch={"patient": prefetch["patient"]}))
    valid_feedback = _bytes({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-26T09:00:00Z"}]})
    cases = st.one_of(
        st.tuples(st.just(HOOK_PATH), hook_cases(prefetch)),
        st.tuples(st.just(FEEDBACK_PATH), feedback_cases()),
        st.tuples(st.just(HOOK_PATH), raw_cases(valid_hook)),
        st.tuples(st.just(FEEDBACK_PATH), raw_cases(valid_feedback)),
    )
    statuses: Counter[int] = Counter()
    client = service.client

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(case=cases)
    @example(case=(HOOK_PATH, _bytes(hook_body(NO_SLE, prefetch={"patient": {"resourceType": "X" * 300_000}}))))
    @example(case=(HOOK_PATH, _bytes(hook_body(NO_SLE, prefetch={**prefetch, "condition": {
        "resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Y" * 300_000, "id": "1"}}]}}))))
    @example(case=(HOOK_PATH, _bytes(hook_body(NO_SLE, prefetch={**prefetch, "patient": {
        "resourceType": "Patient", "id": "Z" * 300_000}}))))
    @example(case=(HOOK_PATH, _bytes(hook_body(NO_SLE, hook="h" * 300_000))))
    @example(case=(FEEDBACK_PATH, b'{"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "'
                   + b"9" * 300_000 + b'"}]}'))
    def post(case: tuple[str, bytes]) -> None:
        path, raw = case
        resp = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        statuses[resp.status_code] += 1
        assert resp.status_code < 500, (resp.status_code, resp.text[:300], raw[:300])
        doc = resp.json()
        if resp.status_code == 200:
            if path == HOOK_PATH:
                CardsResponse.model_validate(doc)
                assert doc["cards"] == [], "no generated body describes a patient with SLE"
            else:
                assert isinstance(doc.get("stored"), int)
        else:
            assert isinstance(doc.get("error"), str) and doc["error"]
            assert "Traceback" not in doc["error"]
            assert len(doc["error"]) < 2000, "the client's (possibly huge) text is not echoed back whole"

    post()
    print('fuzz statuses', dict(statuses))
    assert sum(statuses.values()) >= 1000, statuses
    assert statuses[400] > 100 and statuses[412] > 0, statuses


def test_another_patients_resources_never_make_cards(service: Service) -> None:
    """A complete prefetch for a patient without SLE, padded with another patient's SLE record."""
    prefetch = service.prefetch(no_sle_resources(), NO_SLE)
    foreign = service.prefetch(other_resources(), OTHER)
    for key, value in foreign.items():
        if key != "patient" and value and prefetch.get(key):
            prefetch[key]["entry"].extend(value["entry"])
    resp = service.client.post(HOOK_PATH, json=hook_body(NO_SLE, prefetch=prefetch))
    assert resp.status_code == 200 and resp.json() == {"cards": []}
