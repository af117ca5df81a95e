"""CDS Hooks client authentication with real keys (spec "Trusting CDS Clients"): EC P-384 and
RSA 3072 keys, the JWK Set served by a real local HTTP server, the app over real HTTP with
`trusted_issuers` and `service_url` configured. Every rejection is a 401 saying only
"authentication failed" with a correlation id; the log explains it under that id, and the
JWT never reaches a log line. The attacker's JWK Set and a catch-all listener are real local
servers too (issue: "authentication bypass through jku")."""

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
from .fake_ehr import Listener

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
    """Serves /keys/jwks.json (the JWK Set can be swapped) and counts the requests it receives."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self.paths: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with outer.lock:
                    outer.fetches += 1
                    outer.paths.append(self.path)
                    body = json.dumps(outer.jwks).encode()
                if self.path.split("?")[0] != "/keys/jwks.json":
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
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/keys/jwks.json"

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


HANGING_ISS = "https://slow.example.org/cds-client"  # a trusted issuer whose JWKS host never answers


@pytest.fixture(scope="module")
def hanging() -> Iterator[Listener]:
    listener = Listener()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, jwks: JwksServer, hanging: Listener) -> Iterator[Secured]:
    from cds.app import create_app

    port = free_port()
    settings = Settings(trusted_issuers={ISS: jwks.url, HANGING_ISS: f"{hanging.base_url}/jwks.json"},
                        service_url=f"http://127.0.0.1:{port}",
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
    out = {"iss": ISS, "aud": aud, "exp": now + 240, "iat": now, "jti": str(uuid.uuid4()), "tenant": "svc-test"}
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


def refused(resp: requests.Response, caplog: pytest.LogCaptureFixture, reason: str) -> None:
    """A 401 that says nothing but "authentication failed" and an id; the log has `reason` under that id."""
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert body["error"] == "authentication failed" and set(body) == {"error", "correlationId"}, body
    assert resp.headers.get("www-authenticate", "").startswith("Bearer")
    lines = [r.getMessage() for r in caplog.records if body["correlationId"] in r.getMessage()]
    assert lines, "the log explains the refusal under its correlation id"
    assert re.search(reason, lines[0]), lines[0]


def no_token_in(text: str, token: str) -> None:
    assert token not in text
    for part in token.split("."):
        if len(part) > 16:
            assert part not in text, "no piece of the JWT reaches the log or the answer"


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


def test_a_jku_naming_the_configured_jwks_url_is_accepted(secured: Secured, keys: Keys, jwks: JwksServer) -> None:
    token = sign(keys.ec, "ES384", claims(f"{secured.base}/cds-services"), kid="ec-1", jku=jwks.url)
    assert secured.get_discovery(token).status_code == 200


# -- the jku bypass: an attacker's own key set, named by the unsigned header --------------------------------


@pytest.fixture(scope="module")
def attacker(keys: Keys) -> Iterator[JwksServer]:
    """The attacker's JWK Set, with their own key under the kid the real issuer uses."""
    server = JwksServer()
    server.publish(_jwk(keys.stranger.public_key(), "ec-1", "ES384"),
                   _jwk(keys.stranger.public_key(), "attacker-1", "ES384"))
    try:
        yield server
    finally:
        server.stop()


def _jku_variants(jwks_url: str, attacker_port: int) -> list[str]:
    real = jwks_url.split("//", 1)[1]  # 127.0.0.1:PORT/keys/jwks.json
    evil = f"127.0.0.1:{attacker_port}"
    return [
        f"http://{evil}\\@{real}",  # the reported bypass: requests connects to what precedes the backslash
        f"http://{evil}\\\\@{real}",
        f"http://{evil}%5C@{real}",
        f"http://{evil}@{real}",
        f"http://{evil}/keys/jwks.json",
        f"http://{evil}/keys/jwks.json#@{real}",
        f"http://{real.split('/')[0]}@{evil}/keys/jwks.json",
        f"http://{evil}\\{real}",
        f"http://{evil}%2f@{real}",
        f"http://{evil}\t@{real}",
        f"{jwks_url}/../../../evil",
        f"{jwks_url}?n=1",
        f"{jwks_url}#1",
    ]


def test_an_attackers_jku_never_opens_the_service(secured: Secured, keys: Keys, jwks: JwksServer,
                                                  attacker: JwksServer, caplog: pytest.LogCaptureFixture) -> None:
    """A token signed with the attacker's key, iss = the trusted issuer, jku = anything: refused on every
    endpoint, and the attacker's server never even receives a request."""
    caplog.set_level(logging.INFO)
    stored = secured.live.app.state.cds.store.feedback_count()
    for jku in _jku_variants(jwks.url, attacker.port):
        for kid in ("ec-1", "attacker-1"):
            for path, method in (("/cds-services", "GET"), (HOOK_PATH, "POST"), (FEEDBACK_PATH, "POST"),
                                 ("/admin/reload", "POST")):
                token = sign(keys.stranger, "ES384", claims(f"{secured.base}{path}"), kid=kid, jku=jku)
                resp = secured.http.request(method, f"{secured.base}{path}", json={},
                                            headers={"Authorization": f"Bearer {token}"}, timeout=30)
                assert resp.status_code == 401, (jku, kid, path, resp.text)
    assert attacker.count() == 0, "the service never connects to a URL from the token"
    assert secured.live.app.state.cds.store.feedback_count() == stored, "no forged feedback row"


def test_jku_variants_cannot_lock_real_clients_out(secured: Secured, keys: Keys, jwks: JwksServer) -> None:
    """The key cache is per configured issuer: no number of distinct jku values fills or evicts it."""
    aud = f"{secured.base}/cds-services"
    for i in range(64):
        for jku in (f"{jwks.url}#{i}", f"{jwks.url}?n={i}"):
            secured.get_discovery(sign(keys.stranger, "ES384", claims(aud), kid=f"x{i}", jku=jku))
    assert not any("?" in p for p in jwks.paths), "no jku was fetched"
    assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")).status_code == 200


# -- rejected -------------------------------------------------------------------------------------------


def _rejections(base: str, keys: Keys, jwks_url: str) -> dict[str, tuple[str, str]]:
    aud = f"{base}/cds-services"
    now = int(time.time())
    ec_pub_pem = keys.ec.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "bad signature": (tamper(sign(keys.ec, "ES384", claims(aud), kid="ec-1")), "signature does not verify"),
        "signed by an unpublished key": (sign(keys.stranger, "ES384", claims(aud), kid="ec-1"),
                                         "signature does not verify"),
        "wrong aud": (sign(keys.ec, "ES384", claims(f"{base}/cds-services/other"), kid="ec-1"), "aud"),
        "aud of another service host": (sign(keys.ec, "ES384", claims("https://cds.example.org/cds-services"),
                                             kid="ec-1"), "aud"),
        "wrong iss": (sign(keys.ec, "ES384", claims(aud, iss="https://evil.example.org"), kid="ec-1"),
                      "issuer .* is not trusted"),
        "expired": (sign(keys.ec, "ES384", claims(aud, exp=now - 120, iat=now - 300), kid="ec-1"), "expired"),
        "iat in the future": (sign(keys.ec, "ES384", claims(aud, iat=now + 600, exp=now + 800), kid="ec-1"),
                              "future"),
        "nbf in the future": (sign(keys.ec, "ES384", claims(aud, nbf=now + 600), kid="ec-1"), r"not yet valid \(nbf\)"),
        "no exp": (sign(keys.ec, "ES384", claims(aud, exp=None), kid="ec-1"), "exp"),
        "exp as a string": (sign(keys.ec, "ES384", claims(aud, exp=str(now + 200)), kid="ec-1"),
                            "exp must be a number"),
        "iat as a string": (sign(keys.ec, "ES384", claims(aud, iat=str(now)), kid="ec-1"), "iat must be a number"),
        "exp as a boolean": (sign(keys.ec, "ES384", claims(aud, exp=True), kid="ec-1"), "exp must be a number"),
        "lifetime over 5 minutes": (sign(keys.ec, "ES384", claims(aud, exp=now + 3600), kid="ec-1"), "lifetime"),
        "no jti": (sign(keys.ec, "ES384", claims(aud, jti=None), kid="ec-1"), "jti"),
        "missing kid": (sign(keys.ec, "ES384", claims(aud)), "no kid"),
        "unknown kid": (sign(keys.ec, "ES384", claims(aud), kid="no-such-kid"), "unknown kid"),
        "an 8 KB kid": (sign(keys.ec, "ES384", claims(aud), kid="k" * 8000), "longer than"),
        "alg none": (unsigned(claims(aud), "ec-1"), "algorithm 'none'"),
        "HS256 keyed with the public key": (hs256_with_public_key(ec_pub_pem, claims(aud), "ec-1"),
                                            "algorithm 'HS256'"),
        "ES256 (not accepted)": (sign(ec.generate_private_key(ec.SECP256R1()), "ES256", claims(aud), kid="ec-1"),
                                 "algorithm 'ES256'"),
        "RS384 header on the EC key": (sign(keys.rsa, "RS384", claims(aud), kid="ec-1"), "does not fit the EC key"),
        "not a JWT": ("not-a-jwt", "malformed"),
        "no typ": (sign(keys.ec, "ES384", claims(aud), kid="ec-1", typ=""), "typ must be 'JWT'"),
        "typ not JWT": (sign(keys.ec, "ES384", claims(aud), kid="ec-1", typ="JOSE"), "typ must be 'JWT'"),
        "a 9 KB token": (sign(keys.ec, "ES384", claims(aud, pad="x" * 9000), kid="ec-1"), "longer than 8192"),
        "a 1 MB token": (sign(keys.ec, "ES384", claims(aud, pad="x" * 1_000_000), kid="ec-1"), "longer than 8192"),
    }


REJECTIONS = [  # the keys of _rejections(), listed here so the test ids exist before the keys do
    "bad signature", "signed by an unpublished key", "wrong aud", "aud of another service host", "wrong iss",
    "expired", "iat in the future", "nbf in the future", "no exp", "exp as a string", "iat as a string",
    "exp as a boolean", "lifetime over 5 minutes", "no jti", "missing kid", "unknown kid", "an 8 KB kid", "alg none",
    "HS256 keyed with the public key", "ES256 (not accepted)", "RS384 header on the EC key", "not a JWT", "no typ",
    "typ not JWT", "a 9 KB token", "a 1 MB token",
]


@pytest.mark.parametrize("case", REJECTIONS)
def test_bad_tokens_are_refused_without_a_reason_to_the_client(secured: Secured, keys: Keys, jwks: JwksServer,
                                                               caplog: pytest.LogCaptureFixture, case: str) -> None:
    token, reason = _rejections(secured.base, keys, jwks.url)[case]
    caplog.set_level(logging.DEBUG)
    resp = secured.get_discovery(token)
    refused(resp, caplog, reason)
    no_token_in(resp.text, token)
    no_token_in(caplog.text, token)


def test_the_401_does_not_tell_trusted_from_untrusted_issuers(secured: Secured, keys: Keys,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    aud = f"{secured.base}/cds-services"
    answers = []
    for iss in (ISS, "https://evil.example.org"):
        resp = secured.get_discovery(sign(keys.stranger, "ES384", claims(aud, iss=iss), kid="zz"))
        body = resp.json()
        answers.append((resp.status_code, body["error"], sorted(body)))
    assert answers[0] == answers[1]


def test_a_replayed_jti_is_refused_even_after_a_restart(
        tmp_path_factory: pytest.TempPathFactory, secured: Secured, keys: Keys, jwks: JwksServer,
        caplog: pytest.LogCaptureFixture) -> None:
    from cds.app import create_app

    caplog.set_level(logging.DEBUG)
    db = tmp_path_factory.mktemp("replay") / "trial-cds.sqlite"
    port = free_port()
    settings = Settings(trusted_issuers={ISS: jwks.url}, service_url=f"http://127.0.0.1:{port}", db=db,
                        pool_size=1, cql_timeout=120.0)
    token = sign(keys.rsa, "RS384", claims(f"http://127.0.0.1:{port}/cds-services"), kid="rsa-1")
    url = f"http://127.0.0.1:{port}/cds-services"
    headers = {"Authorization": f"Bearer {token}"}
    live = LiveServer(create_app(settings), port=port).start()
    try:
        assert secured.http.get(url, headers=headers, timeout=30).status_code == 200
        refused(secured.http.get(url, headers=headers, timeout=30), caplog, "replayed")
    finally:
        live.stop()
    live = LiveServer(create_app(settings), port=port).start()  # same database, new process state
    try:
        refused(secured.http.get(url, headers=headers, timeout=30), caplog, "replayed")
    finally:
        live.stop()
    no_token_in(caplog.text, token)


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer  "])
def test_missing_or_non_bearer_authorization_is_refused(secured: Secured, header: str | None,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    headers = {"Authorization": header} if header is not None else {}
    resp = secured.http.get(f"{secured.base}/cds-services", headers=headers, timeout=30)
    refused(resp, caplog, "Authorization|missing")


def test_hook_and_feedback_refuse_a_discovery_token(secured: Secured, keys: Keys,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """`aud` names the endpoint: a token minted for discovery does not open the hook."""
    caplog.set_level(logging.INFO)
    for path in (HOOK_PATH, FEEDBACK_PATH):
        token = sign(keys.ec, "ES384", claims(f"{secured.base}/cds-services"), kid="ec-1")
        resp = secured.http.post(f"{secured.base}{path}", json={}, headers={"Authorization": f"Bearer {token}"},
                                 timeout=30)
        refused(resp, caplog, "aud")


def test_unknown_kid_triggers_one_jwks_refresh_and_key_rotation_works(
        secured: Secured, keys: Keys, jwks: JwksServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    aud = f"{secured.base}/cds-services"
    # Refreshes are rate-limited per issuer; let this test rotate without waiting.
    monkeypatch.setattr(secured.verifier.keys, "refresh_interval", 0.0)
    assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")).status_code == 200
    before = jwks.count()
    refused(secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="not-yet")), caplog, "unknown kid")
    assert jwks.count() == before + 1, "an unknown kid refreshes the JWK Set exactly once"

    # The client rotates: new key "ec-2" published, "ec-1" withdrawn.
    jwks.publish(_jwk(keys.ec_rotated.public_key(), "ec-2", "ES384"), _jwk(keys.rsa.public_key(), "rsa-1", "RS384"))
    try:
        resp = secured.get_discovery(sign(keys.ec_rotated, "ES384", claims(aud), kid="ec-2"))
        assert resp.status_code == 200, resp.text
        assert jwks.count() == before + 2
        assert secured.get_discovery(sign(keys.ec_rotated, "ES384", claims(aud), kid="ec-2")).status_code == 200
        assert jwks.count() == before + 2, "a known kid is served from the cache"
        refused(secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")), caplog, "unknown kid")
    finally:
        jwks.publish(_jwk(keys.ec.public_key(), "ec-1", "ES384"), _jwk(keys.rsa.public_key(), "rsa-1", "RS384"))
        # an unknown kid (ec-1 was withdrawn) refreshes back to the original set for the other tests
        assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")).status_code == 200


def test_unknown_kids_cannot_make_the_service_hammer_the_jwks_url(
        secured: Secured, keys: Keys, jwks: JwksServer, monkeypatch: pytest.MonkeyPatch) -> None:
    aud = f"{secured.base}/cds-services"
    assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid="ec-1")).status_code == 200
    monkeypatch.setattr(secured.verifier.keys, "refresh_interval", 3600.0)
    before = jwks.count()
    for i in range(10):
        assert secured.get_discovery(sign(keys.ec, "ES384", claims(aud), kid=f"spam-{i}")).status_code == 401
    assert jwks.count() == before, "within the refresh interval unknown kids are refused from the cache"


# -- a JWKS host that never answers must not freeze the service ---------------------------------------------


def test_a_hanging_jwks_host_leaves_the_event_loop_free(secured: Secured, keys: Keys, hanging: Listener,
                                                        caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten tokens of a trusted issuer whose JWKS host accepts connections and never answers: /healthz
    answers while they wait, they get a 401 in bounded time, and the failure is cached (no new fetch)."""
    caplog.set_level(logging.INFO)
    before = hanging.connections()
    # The start-up fetch of this issuer already failed (and is cached): let these calls try again.
    monkeypatch.setattr(secured.verifier.keys, "refresh_interval", 0.0)
    aud = f"{secured.base}/cds-services"
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def call() -> None:
        started = time.monotonic()
        resp = requests.get(aud, headers={"Authorization": "Bearer " + sign(
            keys.ec, "ES384", claims(aud, iss=HANGING_ISS), kid="ec-1")}, timeout=60)
        with lock:
            results.append((resp.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    # While they wait on the JWKS host, the event loop serves others.
    health_started = time.monotonic()
    health = secured.http.get(f"{secured.base}/healthz", timeout=30)
    health_took = time.monotonic() - health_started
    with lock:
        finished_before_health = len(results)
    for t in threads:
        t.join(timeout=60)
    assert health.status_code == 200
    assert finished_before_health == 0 and health_took < 2.0, "healthz answered before the hanging calls"
    assert [s for s, _ in results] == [401] * 10
    assert max(t for _, t in results) < 30, "the wait on the JWKS host is bounded"
    connections = hanging.connections()
    assert 1 <= connections - before <= 2, "one fetch for the issuer, shared by the ten callers"
    monkeypatch.setattr(secured.verifier.keys, "refresh_interval", 3600.0)
    started = time.monotonic()
    resp = secured.get_discovery(sign(keys.ec, "ES384", claims(aud, iss=HANGING_ISS), kid="ec-1"))
    assert resp.status_code == 401 and time.monotonic() - started < 2.0, "the failure is cached for a while"
    assert hanging.connections() == connections
    status = secured.http.get(f"{secured.base}/readyz", timeout=30).json()["issuerKeys"]
    assert "not fetched" in status[HANGING_ISS] and status[ISS].startswith("ok")
