"""Integration tests against a real FHIR engine (Medplum's router behind tests/fhir_server/server.mjs).

One server per session; every test starts from an empty server with no auth check.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fhirserver import FhirTestServer


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    # No skip: the README's install command installs the server (npm ci --prefix tests/fhir_server);
    # a missing install must fail the run, not hide the integration tests.
    server = FhirTestServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _reset_fhir_server(request: pytest.FixtureRequest) -> None:
    if "fhir_server" in request.fixturenames:
        request.getfixturevalue("fhir_server").reset()
