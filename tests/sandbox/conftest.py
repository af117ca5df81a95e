"""The sandbox run: the end-to-end hooks against any FHIR R4 server named by TRIAL_CDS_TEST_FHIR_URL.

    TRIAL_CDS_TEST_FHIR_URL=https://hapi.fhir.org/baseR4 pytest -m sandbox
    TRIAL_CDS_TEST_FHIR_URL=local pytest -m sandbox     # self-check against tests/fhirserver (offline)

Optional TRIAL_CDS_TEST_FHIR_TOKEN: a bearer token for the server (publishing, hooks, cleanup).
Without TRIAL_CDS_TEST_FHIR_URL every test here is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

ENV_URL = "TRIAL_CDS_TEST_FHIR_URL"
ENV_TOKEN = "TRIAL_CDS_TEST_FHIR_TOKEN"


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    url = os.environ.get(ENV_URL, "").strip()
    if not url:
        pytest.skip(f"{ENV_URL} is not set (a FHIR R4 base URL, or `local` for the offline self-check)")
    if url == "local":
        from tests.fhirserver import FhirTestServer

        with FhirTestServer() as server:
            yield server.base_url
        return
    if not url.startswith(("http://", "https://")):
        pytest.fail(f"{ENV_URL} must be an http(s) FHIR base URL or `local`, got {url!r}")
    yield url.rstrip("/")


@pytest.fixture(scope="session")
def sandbox_token() -> str | None:
    return os.environ.get(ENV_TOKEN) or None
