"""The URL policy (cds.net.urls): the allowlist decision and the host the HTTP client actually
connects to never disagree, whatever the URL holds (hypothesis, with backslashes, `@`,
percent-encodings, IPv6, ports, odd schemes and separators)."""

from __future__ import annotations

import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from urllib3.util import parse_url

from cds.net.urls import HttpUrl, UnsafeUrl, allowed, parse_http_url

ALLOWLIST = [parse_http_url("http://127.0.0.1:18150/fhir"), parse_http_url("https://ehr.example/fhir/r4"),
             parse_http_url("http://[::1]:8080/api")]

PIECES = ["\\", "\n", "@", "%40", "%5c", "%5C", "%2f", "%2F", "%2e", "..", ".", ":", "/", "//", "?", "#", "%00", "\t",
          " ", "\r\n", "[", "]", "u:p", "127.0.0.1", "127.0.0.1:18150", "127.0.0.1:18151", "ehr.example",
          "EHR.Example", "evil.example", "[::1]", "[::1]:8080", ":18150", ":443", ":0", ":99999", "fhir", "r4", "api",
          "ｅｈｒ.example", "é"]


@st.composite
def urls(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        scheme = draw(st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp", "file", "", "javascript"]))
        sep = draw(st.sampled_from(["://", ":/", ":\\\\", ":////", "://\\", ":"]))
        host = draw(st.sampled_from(["127.0.0.1:18150", "ehr.example", "[::1]:8080", "127.0.0.1:18151",
                                     "evil.example", "EHR.example:443", "127.0.0.1"]))
        before = "".join(draw(st.lists(st.sampled_from(PIECES), max_size=4)))
        after = "".join(draw(st.lists(st.sampled_from(PIECES), max_size=4)))
        path = draw(st.sampled_from(["/fhir", "/fhir/r4", "/api", "", "/fhir/Patient/1", "/fhirx"]))
        tail = "".join(draw(st.lists(st.sampled_from(PIECES), max_size=4)))
        return f"{scheme}{sep}{before}{host}{after}{path}{tail}"
    return draw(st.text(alphabet=st.sampled_from(list("htps:/\\@.%25cfe[]1:80?#ab ")), max_size=40))


def connects_to(url: str) -> tuple[str, str, int]:
    """Where `requests` would open its socket for `url`: the prepared URL as urllib3's pool reads it."""
    prepared = requests.Request("GET", url).prepare()
    assert prepared.url is not None
    parsed = parse_url(prepared.url)
    scheme = (parsed.scheme or "").lower()
    port = parsed.port or {"http": 80, "https": 443}[scheme]
    return scheme, (parsed.host or "").lower(), port


@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=urls())
@example(text="http://127.0.0.1:18151\\@127.0.0.1:18150/fhir/ok")
@example(text="http://ATTACKER\\@ehr.example/fhir/r4")
@example(text="https://evil.example%2f@ehr.example/fhir/r4")
@example(text="http://[::1]:8080@evil.example/api")
def test_the_allowlist_decision_and_the_connection_never_disagree(text: str) -> None:
    try:
        url = parse_http_url(text)
    except UnsafeUrl:
        return  # refused: nothing is connected to
    assert isinstance(url, HttpUrl)
    # The service connects to str(url): the decision is about exactly that host.
    assert connects_to(str(url)) == url.origin
    # And the text that came in would have gone to the same place (the parsers agree on it).
    try:
        raw = connects_to(text)
    except (requests.exceptions.RequestException, ValueError, KeyError):
        raw = None
    assert raw is None or raw == url.origin, (text, raw, url.origin)
    if allowed(url, ALLOWLIST):
        prefix = next(p for p in ALLOWLIST if url.under(p))
        assert connects_to(str(url)) == prefix.origin


def test_a_parsed_url_is_stable() -> None:
    for text in ("http://EHR.example:80/fhir?x=1", "https://[::1]:8443/a/b", "http://h/p?q=a|b"):
        url = parse_http_url(text)
        assert parse_http_url(str(url)) == url


def test_join_stays_under_the_policy() -> None:
    base = parse_http_url("https://ehr.example/fhir/r4/")
    assert str(base.join("Patient/1")) == "https://ehr.example/fhir/r4/Patient/1"
    assert str(base.join("https://ehr.example/fhir/r4/Observation?_page=2")).endswith("?_page=2")
    assert not base.join("https://evil.example/fhir/r4/x").under(base)
    for bad in ("\\\\evil.example/x", "https://evil\\@ehr.example/fhir/r4", "../../admin", "%2e%2e/admin"):
        try:
            joined = base.join(bad)
        except UnsafeUrl:
            continue
        assert not joined.under(base), bad
