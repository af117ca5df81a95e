"""End-to-end hooks against an external FHIR server (marker `sandbox`; see conftest.py).

A run publishes three synthetic patients under its own namespace (id prefix `tcds-<run>-`, tag
`https://trial-cds.dev/test-run|<run>`), fires `patient-view` at the service with that server as
`fhirServer` and no prefetch, checks every card against the same patient's hook with prefetch
(the local path), and deletes everything it wrote, even when a test failed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

from cds.app import SERVICE_ID, create_app
from cds.paths import PATIENTS_DIR
from cds.publish import read_bundle
from cds.settings import Settings

from .namespace import TAG_SYSTEM, delete_all, keys_of, namespaced, new_run_id, prefix_for, publish, still_there, strip_prefix

pytestmark = pytest.mark.sandbox

# likely eligible for some trial / possibly eligible with tests missing / no SLE, no cards
PATIENTS = ["adult-likely", "adult-missing-serology", "no-sle"]
HOOK_PATH = f"/cds-services/{SERVICE_ID}"


class Run:
    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self.id = new_run_id()
        self.prefix = prefix_for(self.id)
        self.sources = namespaced([read_bundle(PATIENTS_DIR / f"{p}.json") for p in PATIENTS], self.id)
        self.keys = keys_of(self.sources)


@pytest.fixture(scope="module")
def run(sandbox_url: str, sandbox_token: str | None) -> Iterator[Run]:
    r = Run(sandbox_url, sandbox_token)
    try:
        publish(r.url, r.sources, r.token)
        yield r
    finally:
        problems = delete_all(r.url, r.keys, r.token)
        left = still_there(r.url, r.keys, r.token)
        assert not problems and not left, (
            f"cleanup of run {r.id} on {r.url} incomplete: {problems or ''} still readable: {left}")


@pytest.fixture(scope="module")
def client(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # insecure (no JWT): the hooks come from this test, not from an EHR; the sandbox is allowlisted.
    settings = Settings(insecure=True, fhir_allowlist=[run.url], db=tmp_path_factory.mktemp("sandbox") / "cds.sqlite",
                        cql_timeout=120.0, fetch_timeout=30.0, hook_budget=120.0)
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        yield c


def local_hook(pid: str) -> dict[str, Any]:
    body = json.loads((PATIENTS_DIR / "hooks" / f"{pid}.json").read_text(encoding="utf-8"))
    body["hookInstance"] = str(uuid.uuid4())
    return body


def remote_hook(run: Run, pid: str) -> dict[str, Any]:
    body: dict[str, Any] = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "fhirServer": run.url,
                            "context": {"userId": "Practitioner/example", "patientId": run.prefix + pid}}
    if run.token:
        body["fhirAuthorization"] = {"access_token": run.token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "user/*.read", "subject": "trial-cds"}
    return body


def results(resp: Any) -> dict[str, dict[str, Any]]:
    assert resp.status_code == 200, resp.text[:500]
    return {c["extension"]["trial-cds"]["researchStudy"]: c["extension"]["trial-cds"] for c in resp.json()["cards"]}


def test_published_under_the_run_namespace(run: Run) -> None:
    headers = {"Accept": "application/fhir+json", **({"Authorization": f"Bearer {run.token}"} if run.token else {})}
    for key in run.keys:
        res = requests.get(f"{run.url}/{key}", headers=headers, timeout=60).json()
        assert res["id"].startswith(run.prefix), key
        assert {"system": TAG_SYSTEM, "code": run.id} in [
            {"system": t.get("system"), "code": t.get("code")} for t in res.get("meta", {}).get("tag", [])], key
    found = requests.get(f"{run.url}/Patient", params={"_tag": f"{TAG_SYSTEM}|{run.id}", "_count": 50},
                         headers=headers, timeout=60).json()
    assert sorted(e["resource"]["id"] for e in found.get("entry", [])) == sorted(run.prefix + p for p in PATIENTS)


@pytest.mark.parametrize("pid", PATIENTS)
def test_hook_from_fhir_server_matches_prefetch(run: Run, client: TestClient, pid: str) -> None:
    local = results(client.post(HOOK_PATH, json=local_hook(pid)))
    remote_resp = client.post(HOOK_PATH, json=remote_hook(run, pid))
    remote = results(remote_resp)
    if pid == "no-sle":
        assert local == remote == {}
        return
    assert local, f"{pid}: the local path gave no cards; the comparison would prove nothing"
    # the fetched record is the namespaced one: evidence names the prefixed resources
    assert run.prefix in json.dumps(remote)
    assert strip_prefix(remote, run.prefix) == local
    if pid == "adult-likely":
        assert "likely-eligible" in {r["verdict"] for r in remote.values()}
