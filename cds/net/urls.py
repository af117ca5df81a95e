"""The outbound URL policy: which URLs the service will connect to, decided by the parser that connects.

Why: a security decision about a URL ("is this under the allowlisted FHIR server?", "is this
the issuer's JWKS URL?") made with one parser and a connection made with another is a bypass
waiting to happen. `urlsplit` ends the host at the last `@` while urllib3 (what `requests`
connects with) ends it at a backslash, so `http://evil\\@good/` was "good" to the check and
"evil" to the socket. So:

1. Refuse outright what parsers are known to disagree on: anything but printable ASCII
   (control characters, spaces, non-ASCII hosts), backslashes, userinfo (`@` in the
   authority), percent-encoding or anything but host characters in the authority, fragments,
   schemes other than http/https, dot segments and encoded separators (`%2e`, `%2f`, `%5c`)
   in the path.
2. Parse what is left with urllib3's `parse_url`, the parser `requests` itself uses to pick
   the host and port, and cross-check with `urlsplit`; any disagreement is refused.
3. Connect to the URL rebuilt from the parsed parts (`str(HttpUrl)`), never to the text that
   came in, so the decision and the connection are about the same host by construction.

Every outbound URL goes through `parse_http_url`: the `fhirServer` of a hook, its `next` links,
the allowlist entries, JWKS URLs, the catalogue and terminology servers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

MAX_URL_LENGTH = 4096
_SCHEMES = {"http": 80, "https": 443}
# The authority may hold a registered name, an IPv4 address, a bracketed IPv6 address, a port.
_AUTHORITY = re.compile(r"^(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+\Z")
_ENCODED_SEPARATOR = re.compile(r"%(?:2[eEfF]|5[cC])")


class UnsafeUrl(ValueError):
    """A URL the service will not connect to; the message says why (never the whole URL)."""


@dataclass(frozen=True)
class HttpUrl:
    """An http(s) URL that passed the policy; `str()` is what the service connects to."""

    scheme: str
    host: str  # lower case; IPv6 in brackets
    port: int  # explicit or the scheme's default
    path: str  # "" or starting with "/"; no dot segments
    query: str | None = None

    def __str__(self) -> str:
        default = _SCHEMES[self.scheme]
        netloc = self.host if self.port == default else f"{self.host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{self.query}" if self.query is not None else "")

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def under(self, base: HttpUrl) -> bool:
        """Same origin, and the path is `base`'s or below it at a segment boundary."""
        if self.origin != base.origin:
            return False
        mine, theirs = self.path.rstrip("/"), base.path.rstrip("/")
        return mine == theirs or mine.startswith(theirs + "/")

    def join(self, reference: str) -> HttpUrl:
        """Resolve a (possibly relative) reference against this URL and check the result."""
        if not isinstance(reference, str) or "\\" in reference:
            raise UnsafeUrl("the link holds a backslash or is not text")
        base = str(self)
        if not base.endswith("/") and self.query is None:
            base += "/"
        return parse_http_url(urljoin(base, reference))


def _refuse(why: str) -> UnsafeUrl:
    return UnsafeUrl(why)


def parse_http_url(text: object) -> HttpUrl:
    """Check `text` against the policy (module docstring) and parse it; raise UnsafeUrl otherwise."""
    if not isinstance(text, str) or not text:
        raise _refuse("the URL is empty or not text")
    if len(text) > MAX_URL_LENGTH:
        raise _refuse(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not _PRINTABLE.fullmatch(text):
        raise _refuse("the URL holds spaces, control or non-ASCII characters")
    if "\\" in text:
        raise _refuse("the URL holds a backslash")
    if "#" in text:
        raise _refuse("the URL holds a fragment")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise _refuse("only http and https URLs are accepted")
    scheme = scheme.lower()
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, remainder = rest[:end], rest[end:]
    if "@" in authority:
        raise _refuse("the URL holds credentials (userinfo); they are never sent")
    if not _AUTHORITY.fullmatch(authority):
        raise _refuse("the URL's host part is not a plain host name, IP address and port")
    path, qmark, query = remainder.partition("?")
    if _ENCODED_SEPARATOR.search(path):
        raise _refuse("the URL's path holds an encoded '.', '/' or '\\'")
    if any(seg in (".", "..") for seg in unquote(path).split("/")):
        raise _refuse("the URL's path holds '.' or '..' segments")
    try:
        parsed = parse_url(text)
        split = urlsplit(text)
        split_port = split.port
    except (LocationParseError, ValueError):
        raise _refuse("the URL cannot be parsed") from None
    host = (parsed.host or "").lower()
    if not host:
        raise _refuse("the URL has no host")
    port = parsed.port if parsed.port is not None else _SCHEMES[scheme]
    split_host = (split.hostname or "").lower()
    if host.strip("[]") != split_host or (split_port if split_port is not None else _SCHEMES[scheme]) != port:
        raise _refuse("URL parsers disagree about this URL's host")
    if not 0 < port < 65536:
        raise _refuse("the URL's port is out of range")
    return HttpUrl(scheme, host, port, path, query if qmark else None)


def allowed(url: HttpUrl, allowlist: Iterable[HttpUrl]) -> bool:
    """Is `url` at or under one of the allowlisted prefixes?"""
    return any(url.under(prefix) for prefix in allowlist)
