"""Unit tests of the pieces under the service: URL allowlist, Retry-After, the FHIR client
against the fake EHR, record assembly rules, card uuids, request body parsing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from cds.app import ApiError, parse_body, server_timing
from cds.cards import card_uuid
from cds.fhir.client import FhirAuthError, FhirClient, FhirError, FhirTimeout, _retry_after, allowed, under
from cds.hooks.models import FeedbackRequest, HookRequest
from cds.hooks.prefetch import PrefetchQuery
from cds.record import DataUnavailable, MalformedPrefetch, assemble_record

from .conftest import FIT, NO_SLE, fit_resources, no_sle_resources
from .fake_ehr import FakeEhr, Listener


@pytest.fixture(scope="module")
def small_ehr() -> Iterator[FakeEhr]:
    server = FakeEhr(page_size=3).start()
    server.load(fit_resources() + no_sle_resources())
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("url,base,ok", [
    ("https://ehr.example/fhir", "https://ehr.example/fhir", True),
    ("https://ehr.example/fhir/", "https://ehr.example/fhir", True),
    ("https://ehr.example/fhir/Patient/1", "https://ehr.example/fhir", True),
    ("https://EHR.example:443/fhir/x", "https://ehr.example/fhir", True),
    ("https://ehr.example/fhirx", "https://ehr.example/fhir", False),
    ("http://ehr.example/fhir", "https://ehr.example/fhir", False),
    ("https://ehr.example:8443/fhir", "https://ehr.example/fhir", False),
    ("https://ehr.example.evil.com/fhir", "https://ehr.example/fhir", False),
    ("https://ehr.example@evil.com/fhir", "https://ehr.example/fhir", False),
    ("https://ehr.example/fhir/../admin", "https://ehr.example/fhir", False),
    ("https://ehr.example/fhir/%2E%2E/admin", "https://ehr.example/fhir", False),
    ("https://ehr.example/fhir/./Patient", "https://ehr.example/fhir", False),
    ("https://ehr.example/fhir/a..b", "https://ehr.example/fhir", True),
    ("https://[::1/fhir", "https://ehr.example/fhir", False),
    ("not a url", "https://ehr.example/fhir", False),
])
def test_under(url: str, base: str, ok: bool) -> None:
    assert under(url, base) is ok


def test_allowed_needs_a_listed_prefix() -> None:
    assert allowed("https://ehr.example/fhir/r4", ["https://other", "https://ehr.example/fhir"])
    assert not allowed("https://ehr.example/fhir", [])
    assert not allowed("https://ehr.example/fhir", [""])


def test_retry_after() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert 50 < _retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_client_pages_through_a_search(small_ehr: FakeEhr) -> None:
    small_ehr.reset()
    client = FhirClient(small_ehr.base_url, "s3cret-tok", timeout=2, budget=10)
    found = client.search(f"Observation?patient={FIT}")
    assert len(found) == sum(r["resourceType"] == "Observation" for r in fit_resources())
    assert client.requests_made == len(small_ehr.requests()) > 1
    assert "s3cret-tok" not in repr(client)
    client.close()
    assert "s3cret-tok" not in repr(client.__dict__)


def test_client_page_cap_refuses_a_partial_record(small_ehr: FakeEhr) -> None:
    client = FhirClient(small_ehr.base_url, None, page_cap=2)
    with pytest.raises(FhirError, match="more than 2 pages"):
        client.search(f"Observation?patient={FIT}")


def test_client_read_missing_is_none_and_401_is_an_auth_error(small_ehr: FakeEhr) -> None:
    client = FhirClient(small_ehr.base_url, "tok")
    assert client.read("Patient/nobody") is None
    with small_ehr.faulty(mode="status", status=401), pytest.raises(FhirAuthError):
        client.read(f"Patient/{NO_SLE}")


def test_client_budget_covers_a_trickling_body(small_ehr: FakeEhr) -> None:
    client = FhirClient(small_ehr.base_url, "tok", timeout=1.0, budget=0.8)
    started = time.monotonic()
    with small_ehr.faulty(mode="trickle", seconds=0.1), pytest.raises(FhirTimeout, match="budget"):
        client.read(f"Patient/{NO_SLE}")
    assert time.monotonic() - started < 2.0


def test_client_refuses_urls_off_its_server(small_ehr: FakeEhr) -> None:
    listener = Listener()
    try:
        client = FhirClient(small_ehr.base_url, "tok")
        with pytest.raises(FhirError, match="outside"):
            client.read(f"{listener.base_url}/Patient/{NO_SLE}")
        assert listener.connections() == 0
    finally:
        listener.close()


QUERIES = [PrefetchQuery("patient", "Patient", "Patient/{{context.patientId}}"),
           PrefetchQuery("condition", "Condition", "Condition?patient={{context.patientId}}")]


def _searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def test_record_from_prefetch_drops_other_patients() -> None:
    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    theirs = {**mine[1], "id": "theirs", "subject": {"reference": "Patient/someone-else"}}
    record = assemble_record(NO_SLE, QUERIES, {"patient": mine[0], "condition": _searchset(mine[1], theirs)}, None)
    assert [e["resource"]["id"] for e in record.bundle["entry"]] == [NO_SLE, mine[1]["id"]]
    assert record.dropped == 1 and set(record.sources.values()) == {"prefetch"}


def test_record_keeps_versioned_references_to_the_patient() -> None:
    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    versioned = {**mine[1], "id": "versioned", "subject": {"reference": f"Patient/{NO_SLE}/_history/3"}}
    other_version = {**mine[1], "id": "other", "subject": {"reference": "Patient/someone-else/_history/3"}}
    record = assemble_record(NO_SLE, QUERIES, {"patient": mine[0], "condition": _searchset(versioned, other_version)}, None)
    assert [e["resource"]["id"] for e in record.bundle["entry"]] == [NO_SLE, "versioned"]
    assert record.dropped == 1


@pytest.mark.parametrize("patient_id", [".", "..", "..."])
def test_dot_only_patient_ids_are_not_fhir_ids(patient_id: str) -> None:
    from pydantic import ValidationError

    from cds.hooks.models import PatientViewContext

    with pytest.raises(ValidationError):
        PatientViewContext.model_validate({"patientId": patient_id})


@pytest.mark.parametrize("prefetch,error", [
    ({"patient": {"resourceType": "Observation"}, "condition": None}, MalformedPrefetch),
    ({"patient": {"resourceType": "Patient", "id": "x"}, "condition": None}, MalformedPrefetch),
    ({"patient": {"resourceType": "Patient", "id": NO_SLE}, "condition": {"resourceType": "Bundle", "entry": 1}},
     MalformedPrefetch),
    ({"patient": {"resourceType": "Patient", "id": NO_SLE}, "condition": {"resourceType": "Bundle", "link": "x"}},
     MalformedPrefetch),
    ({"patient": {"resourceType": "Patient", "id": NO_SLE}, "condition": [1]}, MalformedPrefetch),
    ({"patient": None, "condition": None}, DataUnavailable),
    ({"patient": {"resourceType": "Patient", "id": NO_SLE}}, DataUnavailable),
    ({"patient": {"resourceType": "Patient", "id": NO_SLE},
      "condition": {"resourceType": "OperationOutcome"}}, DataUnavailable),
])
def test_record_refusals(prefetch: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        assemble_record(NO_SLE, QUERIES, prefetch, None)


def test_card_uuid_is_stable_and_distinct() -> None:
    assert card_uuid("h1", "t1") == card_uuid("h1", "t1")
    assert len({card_uuid("h1", "t1"), card_uuid("h2", "t1"), card_uuid("h1", "t2"),
                card_uuid("h1", "t1", "referral")}) == 4


@pytest.mark.parametrize("raw,fragment", [
    (b"", "not JSON"),
    (b"\xff{}", "not UTF-8"),
    (b'{"a": "\xed\xa0\x80"}', "not UTF-8"),
    (b'{"hook": "\\ud800"}', "surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[]", "JSON object"),
    (b'{"hook": 1}', "invalid request"),
])
def test_parse_body_refusals(raw: bytes, fragment: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_body(raw, HookRequest)
    assert info.value.status == 400 and fragment in info.value.message


def test_parse_body_accepts_paired_surrogates_and_a_bom() -> None:
    doc = parse_body(b'\xef\xbb\xbf{"feedback": [{"card": "\\ud83d\\ude00", "outcome": "overridden", '
                     b'"outcomeTimestamp": "2026-01-01T00:00:00Z"}]}', FeedbackRequest)
    assert doc.feedback[0].card == "\U0001F600"


def test_server_timing_header_format() -> None:
    assert server_timing({"parse": 0.5, "cql": 12.04}) == "parse;dur=0.5, cql;dur=12.0"
