"""Unit tests of the pieces under the service: URL allowlist, Retry-After, the FHIR client
against the fake EHR, record assembly rules, card uuids, request body parsing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from cds.cards import card_uuid
from cds.fhir.client import FhirAuthError, FhirClient, FhirError, FhirTimeout
from cds.hooks.models import FeedbackRequest, HookRequest
from cds.hooks.prefetch import PrefetchQuery
from cds.hooks.routes import server_timing
from cds.net.http import retry_after
from cds.net.urls import UnsafeUrl, allowed, parse_http_url
from cds.record import DataUnavailable, MalformedPrefetch, assemble_record
from cds.web.body import parse_body
from cds.web.errors import ApiError

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
    ("https://evil.example\\@ehr.example/fhir", "https://ehr.example/fhir", False),
    ("https://ehr.example%2F@evil.example/fhir", "https://ehr.example/fhir", False),
])
def test_under(url: str, base: str, ok: bool) -> None:
    try:
        parsed = parse_http_url(url)
    except UnsafeUrl:
        assert not ok
        return
    assert parsed.under(parse_http_url(base)) is ok


def test_allowed_needs_a_listed_prefix() -> None:
    url = parse_http_url("https://ehr.example/fhir/r4")
    assert allowed(url, [parse_http_url("https://other"), parse_http_url("https://ehr.example/fhir")])
    assert not allowed(url, [])


def test_retry_after() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert 50 < retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


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
    # Each chunk arrives within the per-read timeout; only the whole-call budget can stop it.
    client = FhirClient(small_ehr.base_url, "tok", timeout=1.0, budget=0.8)
    with small_ehr.faulty(mode="trickle", seconds=0.1), pytest.raises(FhirTimeout, match="budget"):
        client.read(f"Patient/{NO_SLE}")


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


EHR_BASE = "https://ehr.example/fhir/r4"


@pytest.mark.parametrize("subject,kept", [
    ({"reference": f"Patient/{NO_SLE}"}, True),
    ({"reference": f"Patient/{NO_SLE}/_history/2"}, True),
    ({"reference": f"Patient/{NO_SLE}", "type": "Patient"}, True),
    ({"reference": f"{EHR_BASE}/Patient/{NO_SLE}"}, True),
    ({"reference": f"{EHR_BASE}/Patient/{NO_SLE}/_history/1"}, True),
    # what a hostile or broken client sends instead
    (f"Patient/{NO_SLE}", False),
    ([{"reference": f"Patient/{NO_SLE}"}], False),
    ({"identifier": {"system": "urn:mrn", "value": "12345"}}, False),
    (None, False),
    ({"reference": f"https://other.example/fhir/Patient/{NO_SLE}"}, False),
    ({"reference": f"https://ehr.example/other/Patient/{NO_SLE}"}, False),
    ({"reference": f"http://ehr.example/fhir/r4/Patient/{NO_SLE}"}, False),
    ({"reference": f"{EHR_BASE}/Patient/{NO_SLE}?x=1"}, False),
    ({"reference": f"https://evil.example\\@ehr.example/fhir/r4/Patient/{NO_SLE}"}, False),
    ({"reference": f"{EHR_BASE}/../r4/Patient/{NO_SLE}"}, False),
    ({"reference": f"Patient/{NO_SLE}/extra"}, False),
    ({"reference": f"Group/{NO_SLE}"}, False),
    ({"reference": f"Patient/{NO_SLE}", "type": "Group"}, False),
    ({"reference": f"urn:uuid:{NO_SLE}"}, False),
    ({"reference": f"patient/{NO_SLE}"}, False),
    ({"reference": "Patient/someone-else"}, False),
])
def test_record_keeps_only_well_formed_references_to_the_context_patient(subject: Any, kept: bool) -> None:
    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    condition = {k: v for k, v in mine[1].items() if k != "subject"}
    if subject is not None:
        condition["subject"] = subject
    record = assemble_record(NO_SLE, QUERIES, {"patient": mine[0], "condition": _searchset(condition)}, None,
                             fhir_server=parse_http_url(EHR_BASE))
    ids = [e["resource"]["id"] for e in record.bundle["entry"]]
    assert (condition["id"] in ids) is kept
    assert record.dropped == (0 if kept else 1)


def test_absolute_references_need_the_hook_server() -> None:
    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    condition = {**mine[1], "subject": {"reference": f"{EHR_BASE}/Patient/{NO_SLE}"}}
    record = assemble_record(NO_SLE, QUERIES, {"patient": mine[0], "condition": _searchset(condition)}, None)
    assert record.dropped == 1


def test_immunization_names_the_patient_in_its_patient_element() -> None:
    queries = [*QUERIES, PrefetchQuery("imm", "Immunization", "Immunization?patient={{context.patientId}}")]
    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    good = {"resourceType": "Immunization", "id": "imm1", "status": "completed",
            "patient": {"reference": f"Patient/{NO_SLE}"}}
    wrong_field = {"resourceType": "Immunization", "id": "imm2", "status": "completed",
                   "subject": {"reference": f"Patient/{NO_SLE}"}}
    record = assemble_record(NO_SLE, queries, {"patient": mine[0], "condition": None,
                                               "imm": _searchset(good, wrong_field)}, None)
    assert [e["resource"]["id"] for e in record.bundle["entry"]][1:] == ["imm1"] and record.dropped == 1


def test_a_record_over_the_limits_is_refused_whole() -> None:
    from cds.record import Limits, RecordTooLarge

    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    many = [{**mine[1], "id": f"c{i}"} for i in range(12)]
    prefetch = {"patient": mine[0], "condition": _searchset(*many)}
    assert len(assemble_record(NO_SLE, QUERIES, prefetch, None, limits=Limits(20, 12)).bundle["entry"]) == 13
    with pytest.raises(RecordTooLarge, match="11 per type") as info:
        assemble_record(NO_SLE, QUERIES, prefetch, None, limits=Limits(20, 11))
    assert info.value.source == "prefetch"
    with pytest.raises(RecordTooLarge, match="more than the 12"):
        assemble_record(NO_SLE, QUERIES, prefetch, None, limits=Limits(12, 100))


def test_a_fetched_record_over_the_limits_is_data_unavailable(small_ehr: FakeEhr) -> None:
    from cds.record import Limits, RecordTooLarge

    client = FhirClient(small_ehr.base_url, "tok", timeout=2, budget=10)
    queries = [*QUERIES, PrefetchQuery("obs", "Observation", "Observation?patient={{context.patientId}}")]
    fit_obs = sum(r["resourceType"] == "Observation" for r in fit_resources())
    with pytest.raises(RecordTooLarge) as info:
        assemble_record(FIT, queries, {}, client, limits=Limits(10_000, fit_obs - 1))
    assert info.value.source == "fetched"


def test_a_reference_with_a_trailing_newline_is_not_the_patient() -> None:
    mine = [r for r in no_sle_resources() if r["resourceType"] in ("Patient", "Condition")]
    condition = {**mine[1], "subject": {"reference": f"Patient/{NO_SLE}\n"}}
    record = assemble_record(NO_SLE, QUERIES, {"patient": mine[0], "condition": _searchset(condition)}, None)
    assert record.dropped == 1
