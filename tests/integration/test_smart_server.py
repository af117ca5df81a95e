"""The test FHIR server as browsers and SMART apps meet it: CORS, /metadata, SMART configuration, an
OAuth 2.0 authorization server (oidc-provider) issuing launch-context tokens, and the bearer check
on every FHIR call (unknown, expired, revoked, other patient, missing scope).

These pin the harness of the browser tests: the flow is driven here with plain HTTP (PKCE S256,
authorization code, token), the way a SMART client library does it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse as up
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from tests.fhirserver import FhirTestServer

CLIENT = "trial-cds-app"
REDIRECT = "http://127.0.0.1:1/app/index.html"  # never called: the code is read from the redirect
LOADER = "loader-secret"


@pytest.fixture(scope="module")
def smart_server() -> Iterator[FhirTestServer]:
    server = FhirTestServer(token=LOADER, smart=True, smart_clients={CLIENT: REDIRECT}).start()
    try:
        for pid in ("p1", "p2"):
            r = requests.put(f"{server.base_url}/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                                     "name": [{"family": pid.upper()}]},
                             headers={"Authorization": f"Bearer {LOADER}"}, timeout=10)
            assert r.status_code in (200, 201), r.text
        yield server
    finally:
        server.stop()


def authorize(server: FhirTestServer, scope: str, launch: str | None = None, patient_pick: str | None = None,
              aud: str | None = None) -> dict[str, Any]:
    """The SMART authorization code flow with PKCE; returns the token response."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": CLIENT, "redirect_uri": REDIRECT, "scope": scope, "state": "s1",
              "aud": aud or server.base_url, "code_challenge": challenge, "code_challenge_method": "S256"}
    if launch:
        params["launch"] = launch
    session = requests.Session()
    r = session.get(f"{server.issuer}/auth", params=params, allow_redirects=False, timeout=10)
    for _ in range(10):
        if r.status_code == 200 and patient_pick and "Choose a patient" in r.text:
            r = session.post(r.url, data={"patient": patient_pick}, allow_redirects=False, timeout=10)
            continue
        location = r.headers.get("location")
        assert location, (r.status_code, r.text[:500])
        if location.startswith(REDIRECT):
            break
        r = session.get(up.urljoin(r.url, location), allow_redirects=False, timeout=10)
    query = up.parse_qs(up.urlparse(location).query)
    assert "code" in query, query
    t = session.post(f"{server.issuer}/token", data={"grant_type": "authorization_code", "code": query["code"][0],
                                                    "redirect_uri": REDIRECT, "client_id": CLIENT,
                                                    "code_verifier": verifier}, timeout=10)
    assert t.status_code == 200, t.text
    return dict(t.json())


def get(server: FhirTestServer, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{server.base_url}/{path}", headers=headers, timeout=10)


def test_metadata_is_a_capability_statement_with_smart_uris(smart_server: FhirTestServer) -> None:
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    doc = requests.get(f"{smart_server.base_url}/metadata", timeout=10).json()
    cs = CapabilityStatement.model_validate(doc)
    assert cs.fhirVersion == "4.0.1" and cs.kind == "instance"
    rest = doc["rest"][0]
    types = {r["type"] for r in rest["resource"]}
    assert {"Patient", "Observation", "Condition", "MedicationRequest", "ServiceRequest"} <= types
    obs = next(r for r in rest["resource"] if r["type"] == "Observation")
    assert {"patient", "code", "date"} <= {p["name"] for p in obs["searchParam"]}
    uris = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    assert uris["authorize"] == f"{smart_server.issuer}/auth" and uris["token"] == f"{smart_server.issuer}/token"


def test_smart_configuration_and_cors(smart_server: FhirTestServer) -> None:
    conf = requests.get(f"{smart_server.base_url}/.well-known/smart-configuration", timeout=10).json()
    assert conf["issuer"] == smart_server.issuer
    assert {"launch-ehr", "launch-standalone", "client-public", "context-ehr-patient", "permission-v2"} <= set(conf["capabilities"])
    assert conf["code_challenge_methods_supported"] == ["S256"]
    oidc = requests.get(f"{smart_server.issuer}/.well-known/openid-configuration", timeout=10).json()
    assert oidc["token_endpoint"] == conf["token_endpoint"]
    pre = requests.options(f"{smart_server.base_url}/Observation", headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"}, timeout=10)
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == "*"
    assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    r = get(smart_server, "Patient/p1", None)
    assert r.status_code == 401 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in r.headers["Access-Control-Expose-Headers"]


def test_ehr_launch_token_carries_the_launch_context(smart_server: FhirTestServer) -> None:
    launch = smart_server.launch("p1", "opaque-card-id")
    tok = authorize(smart_server, "launch openid fhirUser patient/*.read", launch=launch)
    assert tok["patient"] == "p1" and tok["appContext"] == "opaque-card-id" and tok["need_patient_banner"] is True
    assert tok["token_type"] == "Bearer" and tok["expires_in"] > 0
    keys = jwt.PyJWKClient(f"{smart_server.issuer}/jwks")
    claims = jwt.decode(tok["id_token"], keys.get_signing_key_from_jwt(tok["id_token"]).key, algorithms=["RS256"],
                        audience=CLIENT, issuer=smart_server.issuer)
    assert claims["fhirUser"].endswith("/Practitioner/dr-test")
    at = tok["access_token"]
    assert get(smart_server, "Patient/p1", at).status_code == 200
    assert get(smart_server, "Observation?patient=p1", at).status_code == 200
    other = get(smart_server, "Patient/p2", at)
    assert other.status_code == 403 and "insufficient_scope" in other.headers["WWW-Authenticate"]
    assert get(smart_server, "Condition?patient=p2", at).status_code == 403
    assert get(smart_server, "Observation", at).status_code == 403, "a patient token searches its own patient only"
    sr = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal", "code": {"text": "x"},
          "subject": {"reference": "Patient/p1"}}
    no_write = requests.post(f"{smart_server.base_url}/ServiceRequest", json=sr,
                             headers={"Authorization": f"Bearer {at}"}, timeout=10)
    assert no_write.status_code == 403, "read scopes do not write"


def test_unknown_launch_is_refused(smart_server: FhirTestServer) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    s = requests.Session()
    r = s.get(f"{smart_server.issuer}/auth", params={
        "response_type": "code", "client_id": CLIENT, "redirect_uri": REDIRECT, "scope": "launch openid patient/*.read",
        "aud": smart_server.base_url, "launch": "nope", "code_challenge": challenge, "code_challenge_method": "S256"},
        timeout=10)
    assert r.status_code == 400 and "launch is unknown" in r.text


def test_standalone_launch_picks_a_patient_and_can_write_orders(smart_server: FhirTestServer) -> None:
    tok = authorize(smart_server, "launch/patient openid fhirUser patient/*.read patient/ServiceRequest.c",
                    patient_pick="p2")
    assert tok["patient"] == "p2" and "appContext" not in tok
    sr = {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal", "code": {"text": "x"},
          "subject": {"reference": "Patient/p2"}}
    ok = requests.post(f"{smart_server.base_url}/ServiceRequest", json=sr,
                       headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10)
    assert ok.status_code == 201, ok.text
    wrong = requests.post(f"{smart_server.base_url}/ServiceRequest", json=sr | {"subject": {"reference": "Patient/p1"}},
                          headers={"Authorization": f"Bearer {tok['access_token']}"}, timeout=10)
    assert wrong.status_code == 403


def test_expired_revoked_and_foreign_tokens_are_refused(smart_server: FhirTestServer) -> None:
    launch = smart_server.launch("p1")
    a = authorize(smart_server, "launch patient/*.read", launch=launch)["access_token"]
    b = authorize(smart_server, "launch patient/*.read", launch=smart_server.launch("p1"))["access_token"]
    assert get(smart_server, "Patient/p1", a).status_code == 200
    assert smart_server.expire(a)
    expired = get(smart_server, "Patient/p1", a)
    assert expired.status_code == 401 and 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert get(smart_server, "Patient/p1", b).status_code == 200
    smart_server.revoke(b, CLIENT)
    assert get(smart_server, "Patient/p1", b).status_code == 401
    assert get(smart_server, "Patient/p1", "made-up").status_code == 401
    assert get(smart_server, "Patient/p1", LOADER).status_code == 200, "the loader's own token still works"
    with pytest.raises(AssertionError):  # a token for another FHIR server is not issued at all
        authorize(smart_server, "launch patient/*.read", launch=smart_server.launch("p1"), aud="http://elsewhere.example/fhir")
