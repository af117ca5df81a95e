"""Prefetch vs fetch from the EHR's FHIR server (real HTTP both ways): same cards, paging,
where the token goes, and the allowlist that keeps it from servers the service may not call."""

from __future__ import annotations

import copy
from urllib.parse import parse_qsl, urlsplit

from .conftest import FETCH_TOKEN, FIT, NO_SLE, HookCall, Service, hook_body, no_sle_resources, other_resources
from .fake_ehr import OFFSET_PARAM, FakeEhr, Listener


def _essence(call: HookCall) -> list[tuple[str, str, dict]]:
    return [(c["summary"], c["detail"], c["extension"]) for c in call.doc["cards"]]


def test_fetch_path_gives_the_same_cards_as_prefetch(fit_by_prefetch: HookCall, fit_by_fetch: HookCall) -> None:
    assert fit_by_prefetch.status == 200 and fit_by_fetch.status == 200, (fit_by_prefetch.doc, fit_by_fetch.doc)
    assert fit_by_prefetch.ehr_requests == [], "a complete prefetch needs no FHIR call"
    assert fit_by_fetch.doc["cards"], "the fetched record makes cards"
    assert _essence(fit_by_fetch) == _essence(fit_by_prefetch)


def test_fetch_reads_every_page_with_the_bearer_token(service: Service, fit_by_fetch: HookCall) -> None:
    seen = fit_by_fetch.ehr_requests
    assert seen, "the service read the record from the FHIR server"
    assert {r.authorization for r in seen} == {f"Bearer {FETCH_TOKEN}"}, "every request carries the hook's token"
    paths = [urlsplit(r.path) for r in seen]
    # One read of the Patient and every search of the prefetch templates, then the `next` pages.
    assert any(p.path == f"/fhir/Patient/{FIT}" for p in paths)
    first_pages = {p.path.rsplit("/", 1)[-1] for p in paths if p.query and OFFSET_PARAM not in p.query}
    assert first_pages == {q.resource_type for q in service.queries if not q.is_read}
    offsets = sorted(int(dict(parse_qsl(p.query))[OFFSET_PARAM]) for p in paths if OFFSET_PARAM in p.query)
    assert offsets and offsets[0] == 4, "searches were paged (page size 4) and the next links followed"
    # Exactly the pages needed: no page twice, none skipped.
    assert len(seen) == len({r.path for r in seen})


def test_partial_prefetch_fetches_only_what_is_missing(service: Service, ehr: FakeEhr) -> None:
    full = service.prefetch(no_sle_resources(), NO_SLE)
    prefetch = {k: v for k, v in full.items() if k in ("patient", "condition")}
    paged = copy.deepcopy(full["medicationRequest"])
    paged["link"] = [{"relation": "next", "url": f"{ehr.base_url}/MedicationRequest?page=2"}]
    prefetch["medicationRequest"] = paged  # the client paginated: the service must fetch it whole
    prefetch["procedure"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "too-costly"}]}
    ehr.reset()
    resp, _ = service.hook(hook_body(NO_SLE, prefetch=prefetch, fhir_server=ehr.base_url, token="t-partial"))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"cards": []}
    fetched = {urlsplit(r.path).path.rsplit("/", 1)[-1] for r in ehr.requests()}
    expected = {q.resource_type for q in service.queries if q.key not in ("patient", "condition")}
    assert fetched == expected
    assert "Patient" not in fetched and "Condition" not in fetched


def test_other_patients_resources_are_never_evaluated(service: Service) -> None:
    """A prefetch Bundle that also holds someone else's SLE diagnosis: dropped, so still no cards."""
    prefetch = service.prefetch(no_sle_resources(), NO_SLE)
    intruder = next(r for r in other_resources() if r["resourceType"] == "Condition")
    prefetch["condition"]["entry"].append({"resource": intruder})
    resp, _ = service.hook(hook_body(NO_SLE, prefetch=prefetch))
    assert resp.status_code == 200
    assert resp.json() == {"cards": []}


def test_a_prefetched_patient_that_is_not_the_context_patient_is_refused(service: Service) -> None:
    prefetch = service.prefetch(no_sle_resources(), NO_SLE)
    prefetch["patient"] = next(r for r in other_resources() if r["resourceType"] == "Patient")
    resp, _ = service.hook(hook_body(NO_SLE, prefetch=prefetch))
    assert resp.status_code == 400
    assert "context.patientId" in resp.json()["error"]


def test_a_server_outside_the_allowlist_receives_nothing(service: Service) -> None:
    listener = Listener()
    try:
        token = "must-not-leave-" + "x" * 16
        resp, _elapsed = service.hook(hook_body(NO_SLE, fhir_server=listener.base_url, token=token), timeout=30)
        assert resp.status_code == 412
        assert "error" in resp.json() and "cannot be used" in resp.json()["error"]
        assert token not in resp.text
        complete = service.prefetch(no_sle_resources(), NO_SLE)
        resp, _ = service.hook(hook_body(NO_SLE, prefetch=complete, fhir_server=listener.base_url, token=token),
                               timeout=30)
        assert resp.status_code == 200 and resp.json() == {"cards": []}
        assert listener.connections() == 0, "not even a TCP connection"
    finally:
        listener.close()


def test_dot_segments_do_not_escape_the_allowlisted_base(service: Service, ehr: FakeEhr) -> None:
    """`http://ehr/fhir/../admin` is under `http://ehr/fhir` as text, not as a URL: refused (400)."""
    ehr.reset()
    for sneaky in (f"{ehr.base_url}/../admin", f"{ehr.base_url}/%2e%2e/admin"):
        resp, _ = service.hook(hook_body(NO_SLE, fhir_server=sneaky, token="t-dots"), timeout=30)
        assert resp.status_code == 400 and "fhirServer" in resp.json()["error"], resp.text
    assert ehr.requests() == []


def test_cookies_set_by_the_ehr_are_not_replayed(service: Service, ehr: FakeEhr) -> None:
    """A session cookie from one user's call must not ride along another user's call."""
    ehr.reset()
    with ehr.faulty(mode="cookie"):
        resp, _ = service.hook(hook_body(NO_SLE, fhir_server=ehr.base_url, token="t-user-a"), timeout=60)
        assert resp.status_code == 200
    resp, _ = service.hook(hook_body(NO_SLE, fhir_server=ehr.base_url, token="t-user-b"), timeout=60)
    assert resp.status_code == 200
    assert [r.cookie for r in ehr.requests()] == [None] * len(ehr.requests())
