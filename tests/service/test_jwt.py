"""CDS Hooks client authentication with real keys (spec "Trusting CDS Clients"): EC P-384 and
RSA 3072 keys, the JWK Set served by a real local HTTP server, the app over real HTTP with
`trusted_issuers` and `service_url` configured. Every rejection is a 401 naming its reason,
and the JWT never reaches a log line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds.app import SERVICE_ID
from cds.settings import Settings

from .conftest import FEEDBACK_PATH, HOOK_PATH, NO_SLE, LiveServer, bundle_of, free_port, hook_body, no_sle_resources

ISS = "https://ehr.example.org/cds-client"


# -- keys and the JWK Set server ----------------------------------------------------------------


class Keys:
    def __init__(self) -> None:
        self.ec = ec.generate_private_key(ec.SECP384R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        self.ec_rotated = ec.generate_private_key(ec.SECP384R1())
        self.stranger = ec.generate_private_key(ec.SECP384R1())  # never published


def _jwk(public: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = ECAlgorithm if alg.startswith("ES") else RSAAlgorithm
    doc = algo.to_jwk(public, as_dict=True)
    doc.update({"kid": kid, "alg": alg, "use": "sig"})
    return doc


class JwksServer:
    """Serves /keys/jwks.json (the JWK Set can be swapped) and counts the fetches."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with outer.lock:
                    outer.fetches += 1
                    body = json.dumps(outer.jwks).encode()
                if self.path != "/keys/jwks.json":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/keys/jwks.json"

    def publish(self, *keys: dict[str, Any]) -> None:
        with self.lock:
            self.jwks = {"keys": list(keys)}

    def count(self) -> int:
        with self.lock:
            return self.fetches

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks(keys: Keys) -> Iterator[JwksServer]:
    server = JwksServer()
    server.publish(_jwk(keys.ec.public_key(), "ec-1", "ES384"), _jwk(keys.rsa.public_key(), "rsa-1", "RS384"))
    try:
        yield server
    finally:
        server.stop()


class Secured:
    def __init__(self, live: LiveServer, settings: Settings) -> None:
        self.live = live
        self.settings = settings
        self.http = requests.Session()
        self.http.trust_env = False

    @property
    def base(self) -> str:
        return self.live.base_url

    @property
    def verifier(self) -> Any:
        return self.live.app.state.cds.verifier

    def get_discovery(self, token: str | None, scheme: str = "Bearer") -> requests.Response:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        return self.http.get(f"{self.base}/cds-services", headers=headers, timeout=30)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer) -> Iterator[Secured]:
    from cds.app import create_app

    port = free_port()
    settings = Settings(trusted_issuers={ISS: jwks.url}, service_url=f"http://127.0.0.1:{port}",
                        db=tmp_path_factory.mktemp("jwt") / "trial-cds.sqlite", pool_size=1, cql_timeout=120.0)
    live = LiveServer(create_app(settings), port=port).start()
    try:
        yield Secured(live, settings)
    finally:
        live.stop()


# -- tokens -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(aud: Any, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), "tenant": "svc-test"}
    out.update(overrides)
    return {k: v for k, v in out.items() if v is not None}


def sign(key: Any, alg: str, payload: dict[str, Any], **header: Any) -> str:
    headers = {"typ": "JWT", **header}
    return jwt.encode(payload, key, algorithm=alg, headers={k: v for k, v in headers.items() if v is not None})


def unsigned(payload: dict[str, Any], kid: str) -> str:
    head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{head}.{_b64(json.dumps(payload).encode())}."


def hs256_with_public_key(public_pem: bytes, payload: dict[str, Any], kid: str) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the published public key."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(payload).encode())
    sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def tamper(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{_b64(bytes(raw))}"


# -- accepted -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_valid_tokens_are_accepted_on_every_endpoint(secured: Secured, keys: Keys, alg: str) -> None:
    key, kid = (keys.ec, "ec-1") if alg == "ES384" else (keys.rsa, "rsa-1")
    resp = secured.get_discovery(sign(key, alg, claims(f"{secured.base}/cds-services"), kid=kid))
    assert resp.status_code == 200, resp.text
    assert resp.json()["services"][0]["id"] == SERVICE_ID

    prefetch_patient = no_sle_resources()
    from cds.synthetic.ehr import prefetch_for

    prefetch = prefetch_for(bundle_of(prefetch_patient), secured.live.app.state.cds.queries, NO_SLE)
    hook_token = sign(key, alg, claims([f"{secured.base}{HOOK_PATH}"]), kid=kid)  # aud as an array
    resp = secured.http.post(f"{secured.base}{HOOK_PATH}", json=hook_body(NO_SLE, prefetch=prefetch),
                             headers={"Authorization": f"Bearer {hook_token}"}, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"cards": []}

    fb_token = sign(key, alg, claims(f"{secured.base}{FEEDBACK_PATH}"), kid=kid)
    feedback = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                              "outcomeTimestamp": "2026-01-02T03:04:05Z"}]}
    resp = secured.http.post(f"{secured.base}{FEEDBACK_PATH}", json=feedback,
                             headers={"Authorization": f"Bearer {fb_token}"}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_a_jku_under_the_configured_jwks_url_is_accepted(secured: Secured, keys: Keys, jwks: JwksServer) -> None:
    token = sign(keys.ec, "ES384", claims(f"{secured.base}/cds-services"), kid="ec-1", jku=jwks.url)
    assert secured.get_discovery(token).status_code == 200


# -- rejected -------------------------------------------------------------------------------------------


def _rejections(base: str, keys: Keys, jwks_url: str) -> dict[str, tuple[str, str]]:
    aud = f"{base}/cds-services"
    now = int(time.time())
    ec_pub_pem = keys.ec.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    other_host = jwks_url.replace("/keys/jwks.json", "/evil/jwks.json")
    return {
        "bad signature": (tamper(sign(keys.ec, "ES384", claims(aud), kid="ec-1")), "signature does not verify"),
        "signed by an unpublished key": (sign(keys.stranger, "ES384", claims(aud), kid="ec-1"),
                                         "signature does not verify"),
        "wrong aud": (sign(keys.ec, "ES384", claims(f"{base}/cds-services/other"), kid="ec-1"), "aud"),
        "aud of another service host": (sign(keys.ec, "ES384", claims("https://cds.example.org/cds-services"),
                                             kid="ec-1"), "aud"),
        "wrong iss": (sign(keys.ec, "ES384", claims(aud, iss="https://evil.example.org"), kid="ec-1"),
                      "issuer is not trusted"),
        "expired": (sign(keys.ec, "ES384", claims(aud, exp=now - 120, iat=now - 420), kid="ec-1"), "expired"),
        "iat in the future": (sign(keys.ec, "ES384", claims(aud, iat=now + 600, exp=now + 900), kid="ec-1"),
                              "future"),
        "no exp": (sign(keys.ec, "ES384", claims(aud, exp=None), kid="ec-1"), "exp"),
        "no jti": (sign(keys.ec, "ES384", claims(aud, jti=None), kid="ec-1"), "jti"),
        "missing kid": (sign(keys.ec, "ES384", claims(aud)), "no kid"),
        "unknown kid": (sign(keys.ec, "ES384", claims(aud), kid="no-such-kid"), "unknown kid"),
        "alg none": (unsigned(claims(aud), "ec-1"), "algorithm 'none'"),
        "HS256 keyed with the public key": (hs256_with_public_key(ec_pub_pem, claims(aud), "ec-1"),
                                            "algorithm 'HS256'"),
        "ES256 (not accepted)": (sign(ec.generate_private_key(ec.SECP256R1()), "ES256", claims(aud), kid="ec-1"),
                                 "algorithm 'ES256'"),
        "RS384 header on the EC key": (sign(keys.rsa, "RS384", claims(aud), kid="ec-1"), "does not fit the EC key"),
        "jku outside the allowlist": (sign(keys.ec, "ES384", claims(aud), kid="ec-1", jku=other_host),
                                      "jku is not under"),
        "jku escaping with dot segments": (sign(keys.ec, "ES384", claims(aud), kid="ec-1",
                                                jku=jwks_url + "/../../evil/jwks.json"), "jku is not under"),
        "not a JWT": ("not-a-jwt", "malformed"),
        "no typ": (sign(keys.ec, "ES384", claims(aud), kid="ec-1", typ=""), "typ must be 'JWT'"),
        "typ not JWT": (sign(keys.ec, "ES384", claims(aud), kid="ec-1", typ="JOSE"), "typ must be 'JWT'"),
    }


REJECTIONS = [  # the keys of _rejections(), listed here so the test ids exist before the keys do
    "bad signature", "signed by an unpublished key", "wrong aud", "aud of another service host", "wrong iss",
    "expired", "iat in the future", "no exp", "no jti", "missing kid", "unknown kid", "alg none",
    "HS256 keyed with the public key", "ES256 (not accepted)", "RS384 header on the EC key",
    "jku outside the allowlist", "jku escaping with dot segments", "not a JWT", "no typ", "typ not JWT",
]


@pytest.mark.parametrize("case", REJECTIONS)
def test_bad_tokens_are_refused_with_a_reason_and_never_logged(secured: Secured, keys: Keys, jwks: JwksServer,
                                                               caplog: pytest.LogCaptureFixture, case: str) -> None:
    token, reason = _rejections(secured.base, keys, jwks.url)[case]
    caplog.set_level(logging.DEBUG)
    resp = secured.get_discovery(token)
    assert resp.status_code == 401, resp.text
    error = resp.json()["error"]
    assert error.startswith("authentication failed: ")
    assert re.search(reason, error), error
    assert token not in resp.text
    assert "rejected call to /cds-services" in caplog.text, "the rejection is logged (so the log was captured)"
    assert token not in caplog.text
    for part in token.split("."):
        if len(part) > 16:
            assert part not in caplog.text, "no piece of the JWT reaches the log"


def test_a_replayed_jti_is_refused(secured: Secured, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = sign(keys.rsa, "RS384", claims(f"{secured.base}/cds-services"), kid="rsa-1")
    assert secured.get_discovery(token).status_code == 200
    again = secured.get_discovery(token)
    assert again.status_code == 401
    assert "replayed" in again.json()["error"]
    assert token not in caplog.text


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer  "])
def test_missing_or_non_bearer_authorization_is_refused(secured: Secured, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    resp = secured.http.get(f"{secured.base}/cds-services", headers=headers, timeout=30)
    assert resp.status_code == 401
    assert resp.json()["error"].startswith("authentication failed: ")


def test_hook_and_feedback_refuse_a_discovery_token(secured: Secured, keys: Keys) -> None:
    """`aud` names the endpoint: a token minted for discovery does not open the hook."""
    for path in (HOOK_PATH, FEEDBACK_PATH):
        token = sign(keys.ec, "ES384", claims(f"{secured.base}/cds-services"), kid="ec-1")
        resp = secured.http.post(f"{secured.base}{path}", json={}, headers={"Authorization": f"Bearer {token}"},
                                 timeout=30)
        assert resp.status_code == 401 and "aud" in resp.json()["error"]


def test_unknown_kid_triggers_one_jwks_refresh_and_key_rotation_works(
        secured: Secured, keys: Keys, jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> None:
    aud = f"{secured.base}/cds-services"
    # Refreshes are rate-limited per JWKS URL; let this test rotate without waiting.
    monkeypatch.setattr(secured.verifier, "refresh_interval", 0.0)
    assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")).status_code == 200
    before = jwks.count()
    assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="not-yet")).status_code == 401
    assert jwks.count() == before + 1, "an unknown kid refreshes the JWK Set exactly once"

    # The client rotates: new key "ec-2" published, "ec-1" withdrawn.
    jwks.publish(_jwk(keys.ec_rotated.public_key(), "ec-2", "ES384"), _jwk(keys.rsa.public_key(), "rsa-1", "RS384"))
    try:
        resp = secured.get_discovery(sign(keys.ec_rotated, "ES384", claims(aud), kid="ec-2"))
        assert resp.status_code == 200, resp.text
        assert jwks.count() == before + 2
        assert secured.get_discovery(sign(keys.ec_rotated, "ES384", claims(aud), kid="ec-2")).status_code == 200
        assert jwks.count() == before + 2, "a known kid is served from the cache"
        withdrawn = secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1"))
        assert withdrawn.status_code == 401 and "unknown kid" in withdrawn.json()["error"]
    finally:
        jwks.publish(_jwk(keys.ec.public_key(), "ec-1", "ES384"), _jwk(keys.rsa.public_key(), "rsa-1", "RS384"))
        secured.verifier._keys.clear()  # back to the original key set for the other tests


def test_unknown_kids_cannot_make_the_service_hammer_the_jwks_url(
        secured: Secured, keys: Keys, jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> None:
    aud = f"{secured.base}/cds-services"
    assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")).status_code == 200
    monkeypatch.setattr(secured.verifier, "refresh_interval", 3600.0)
    before = jwks.count()
    for i in range(10):
        assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid=f"spam-{i}")).status_code == 401
    assert jwks.count() == before, "within the refresh interval unknown kids are refused from the cache"
