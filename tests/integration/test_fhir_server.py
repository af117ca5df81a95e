"""The test FHIR server answers what real servers answer (read, search, paging, transactions, errors, auth).

These pin the harness: if they fail, integration tests elsewhere cannot be trusted.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from cds.fhir.client import FhirAuthError, FhirClient
from tests.fhirserver import FhirTestServer

LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def put(server: FhirTestServer, resource: dict[str, Any], **kw: Any) -> requests.Response:
    return requests.put(f"{server.base_url}/{resource['resourceType']}/{resource['id']}", json=resource,
                        headers=FHIR_JSON | kw.pop("headers", {}), timeout=10, **kw)


def obs(oid: str, patient: str, code: str, when: str, category: str = "laboratory", value: float = 1.0) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


def patient(pid: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1990-01-01"}


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def search(server: FhirTestServer, query: str) -> dict[str, Any]:
    r = requests.get(f"{server.base_url}/{query}", timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["resourceType"] == "Bundle" and doc["type"] == "searchset"
    return doc


@pytest.fixture
def labs(fhir_server: FhirTestServer) -> FhirTestServer:
    for p in ("p1", "p2"):
        assert put(fhir_server, patient(p)).status_code in (200, 201)
    rows = [
        obs("cr-old", "p1", "2160-0", "2025-01-10T08:00:00Z"),
        obs("cr-new", "p1", "2160-0", "2026-10-01T08:00:00Z"),
        obs("hb", "p1", "718-7", "2026-09-01T08:00:00Z"),
        obs("bp", "p1", "8480-6", "2026-09-15T08:00:00Z", category="vital-signs"),
        obs("cr-p2", "p2", "2160-0", "2026-10-02T08:00:00Z"),
    ]
    for o in rows:
        assert put(fhir_server, o).status_code in (200, 201)
    return fhir_server


def test_read_and_not_found(fhir_server: FhirTestServer) -> None:
    r = put(fhir_server, patient("p1"))
    assert r.status_code in (200, 201)
    got = requests.get(f"{fhir_server.base_url}/Patient/p1", timeout=10)
    assert got.status_code == 200
    body = got.json()
    assert body["id"] == "p1" and body["birthDate"] == "1990-01-01" and body["meta"]["versionId"]
    assert got.headers["ETag"] == f'W/"{body["meta"]["versionId"]}"'
    missing = requests.get(f"{fhir_server.base_url}/Patient/nope", timeout=10)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


def test_update_bumps_version(fhir_server: FhirTestServer) -> None:
    v1 = put(fhir_server, patient("p1")).json()["meta"]["versionId"]
    v2 = put(fhir_server, patient("p1") | {"gender": "male"}).json()["meta"]["versionId"]
    assert v1 != v2
    assert requests.get(f"{fhir_server.base_url}/Patient/p1", timeout=10).json()["gender"] == "male"


def test_search_by_patient_and_subject(labs: FhirTestServer) -> None:
    assert sorted(ids(search(labs, "Observation?patient=p1"))) == ["bp", "cr-new", "cr-old", "hb"]
    assert sorted(ids(search(labs, "Observation?patient=Patient/p2"))) == ["cr-p2"]
    assert sorted(ids(search(labs, "Observation?subject=Patient/p2"))) == ["cr-p2"]


def test_search_by_code_list_category_and_date(labs: FhirTestServer) -> None:
    q = f"Observation?patient=p1&code={LOINC}|2160-0,{LOINC}|718-7"
    assert sorted(ids(search(labs, q))) == ["cr-new", "cr-old", "hb"]
    assert ids(search(labs, "Observation?patient=p1&category=vital-signs")) == ["bp"]
    assert ids(search(labs, f"Observation?patient=p1&category={OBS_CATEGORY}|vital-signs")) == ["bp"]
    assert sorted(ids(search(labs, "Observation?patient=p1&code=2160-0&date=ge2026-01-01"))) == ["cr-new"]
    assert search(labs, "Observation?patient=p1&code=9999-9")["total"] == 0


def test_sort_by_date_descending(labs: FhirTestServer) -> None:
    assert ids(search(labs, "Observation?patient=p1&_sort=-date")) == ["cr-new", "bp", "hb", "cr-old"]
    assert ids(search(labs, "Observation?patient=p1&_sort=date")) == ["cr-old", "hb", "bp", "cr-new"]


def test_paging_with_count_and_next_links(fhir_server: FhirTestServer) -> None:
    put(fhir_server, patient("p1"))
    for i in range(7):
        put(fhir_server, obs(f"o{i}", "p1", "2160-0", f"2026-10-0{i + 1}T08:00:00Z"))
    seen: list[str] = []
    url: str | None = f"{fhir_server.base_url}/Observation?patient=p1&_count=3&_sort=-date"
    pages = 0
    while url:
        doc = requests.get(url, timeout=10).json()
        pages += 1
        assert len(doc.get("entry", [])) <= 3 and doc["total"] == 7
        seen += ids(doc)
        url = next((link["url"] for link in doc["link"] if link["relation"] == "next"), None)
    assert pages == 3
    assert seen == [f"o{i}" for i in reversed(range(7))]
    # the project's client follows the same links
    client = FhirClient(fhir_server.base_url, None, session=requests.Session())
    got = client.search("Observation?patient=p1&_count=2")
    assert sorted(r["id"] for r in got) == [f"o{i}" for i in range(7)]
    assert client.requests_made == 4


def test_default_page_size_is_bounded(fhir_server: FhirTestServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(f"p{i}"), "request": {"method": "PUT", "url": f"Patient/p{i}"}} for i in range(25)]}
    assert requests.post(fhir_server.base_url, json=bundle, timeout=10).status_code == 200
    doc = search(fhir_server, "Patient")
    assert doc["total"] == 25 and len(doc["entry"]) == 20
    assert any(link["relation"] == "next" for link in doc["link"])


def test_transaction_put_and_urn_uuid_references(fhir_server: FhirTestServer) -> None:
    uuid = "urn:uuid:4f1c7a3e-0d4b-4a61-9a57-1c2b3d4e5f60"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1b1b1b1b-0000-4000-8000-000000000001", "resource": patient("p1"),
         "request": {"method": "PUT", "url": "Patient/p1"}},
        {"fullUrl": uuid, "resource": {"resourceType": "Practitioner", "name": [{"family": "Ng"}]},
         "request": {"method": "POST", "url": "Practitioner"}},
        {"resource": obs("o1", "p1", "2160-0", "2026-10-01") | {"performer": [{"reference": uuid}],
                                                                 "subject": {"reference": "urn:uuid:1b1b1b1b-0000-4000-8000-000000000001"}},
         "request": {"method": "PUT", "url": "Observation/o1"}},
    ]}
    r = requests.post(fhir_server.base_url, json=bundle, headers=FHIR_JSON, timeout=10)
    assert r.status_code == 200, r.text
    resp = r.json()
    assert resp["type"] == "transaction-response" and len(resp["entry"]) == 3
    assert all(e["response"]["status"].startswith(("200", "201")) for e in resp["entry"])
    o1 = requests.get(f"{fhir_server.base_url}/Observation/o1", timeout=10).json()
    assert o1["subject"]["reference"] == "Patient/p1"
    perf = o1["performer"][0]["reference"]
    assert perf.startswith("Practitioner/") and "urn:uuid" not in perf
    assert requests.get(f"{fhir_server.base_url}/{perf}", timeout=10).json()["name"][0]["family"] == "Ng"


def test_transaction_is_all_or_nothing(fhir_server: FhirTestServer) -> None:
    before = put(fhir_server, patient("keep")).json()["meta"]["versionId"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("new1"), "request": {"method": "PUT", "url": "Patient/new1"}},
        {"resource": patient("keep") | {"gender": "male"}, "request": {"method": "PUT", "url": "Patient/keep"}},
        {"resource": {"resourceType": "Observation", "id": "bad"}, "request": {"method": "PUT", "url": "Observation/bad"}},
    ]}
    r = requests.post(fhir_server.base_url, json=bundle, timeout=10)
    assert 400 <= r.status_code < 500
    assert r.json()["resourceType"] == "OperationOutcome"
    assert requests.get(f"{fhir_server.base_url}/Patient/new1", timeout=10).status_code == 404
    kept = requests.get(f"{fhir_server.base_url}/Patient/keep", timeout=10).json()
    assert kept["gender"] == "female" and kept["meta"]["versionId"] == before
    assert search(fhir_server, "Patient")["total"] == 1


def test_transaction_over_50_updates_is_refused(fhir_server: FhirTestServer) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(f"p{i}"), "request": {"method": "PUT", "url": f"Patient/p{i}"}} for i in range(51)]}
    r = requests.post(fhir_server.base_url, json=bundle, timeout=10)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert search(fhir_server, "Patient")["total"] == 0


@pytest.mark.parametrize("resource, where", [
    ({"resourceType": "Observation", "id": "o1", "status": "final"}, "Observation.code"),
    ({"resourceType": "Patient", "id": "p1", "birthDate": 1990}, "Patient.birthDate"),
    ({"resourceType": "Patient", "id": "p1", "colour": "blue"}, "Patient.colour"),
])
def test_validation_errors_are_operation_outcomes(fhir_server: FhirTestServer, resource: dict[str, Any], where: str) -> None:
    r = put(fhir_server, resource)
    assert r.status_code == 400
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(where in (i.get("expression") or []) for i in outcome["issue"]), outcome
    assert requests.get(f"{fhir_server.base_url}/{resource['resourceType']}/{resource['id']}", timeout=10).status_code == 404


def test_bad_json_and_wrong_id_are_4xx(fhir_server: FhirTestServer) -> None:
    r = requests.post(fhir_server.base_url, data="{not json", headers=FHIR_JSON, timeout=10)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.put(f"{fhir_server.base_url}/Patient/a", json=patient("b"), timeout=10)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_bearer_token_is_checked_and_recorded(fhir_server: FhirTestServer) -> None:
    fhir_server.reset(token="s3cret")
    r = requests.get(f"{fhir_server.base_url}/Patient?_count=1", timeout=10)
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    r = requests.get(f"{fhir_server.base_url}/Patient", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert r.status_code == 401
    ok = requests.get(f"{fhir_server.base_url}/Patient", headers={"Authorization": "Bearer s3cret"}, timeout=10)
    assert ok.status_code == 200
    with pytest.raises(FhirAuthError):
        FhirClient(fhir_server.base_url, "wrong", session=requests.Session()).search("Patient")
    assert FhirClient(fhir_server.base_url, "s3cret", session=requests.Session()).search("Patient") == []
    log = fhir_server.requests()
    assert [e["authorization"] for e in log] == [None, "Bearer wrong", "Bearer s3cret", "Bearer wrong", "Bearer s3cret"]
    assert log[0] == {"method": "GET", "path": "/Patient?_count=1", "authorization": None}


def test_reset_clears_data_and_auth(fhir_server: FhirTestServer) -> None:
    put(fhir_server, patient("p1"))
    fhir_server.reset()
    assert search(fhir_server, "Patient")["total"] == 0
    assert fhir_server.requests() == [{"method": "GET", "path": "/Patient", "authorization": None}]


def test_injected_503_is_retried_by_the_client(fhir_server: FhirTestServer) -> None:
    put(fhir_server, patient("p1"))
    fhir_server.fail_next(1, status=503, retry_after="0")
    client = FhirClient(fhir_server.base_url, None, session=requests.Session())
    assert client.read("Patient/p1")["id"] == "p1"
    assert client.requests_made == 2
