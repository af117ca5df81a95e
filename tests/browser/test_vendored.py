"""The vendored fhirclient build is the pinned one (README, "The clinician view": version, npm
integrity of its tarball, and this file's sha256), served with its licences."""

from __future__ import annotations

import hashlib

from cds.smart.routes import STATIC

PINNED_SHA256 = "658dec434e308a6ba682158f1e94bfaa0f600bb500e78443369bfe7818133d90"  # fhirclient 2.6.3 build/fhir-client.pure.min.js


def test_vendored_fhirclient_is_the_pinned_build() -> None:
    built = STATIC / "vendor" / "fhir-client.pure.min.js"
    assert hashlib.sha256(built.read_bytes()).hexdigest() == PINNED_SHA256
    assert (STATIC / "vendor" / "fhir-client.LICENSE").read_text(encoding="utf-8").startswith("Copyright 2015 Boston Children")
    pages = [(STATIC / n).read_text(encoding="utf-8") for n in ("index.html", "launch.html")]
    assert all('src="vendor/fhir-client.pure.min.js"' in p for p in pages)
