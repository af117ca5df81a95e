"""Static checks of docker/Dockerfile and docker/compose.yaml (no Docker engine needed).

Text checks only (PyYAML is not a dependency); `docker compose -f docker/compose.yaml config` and
hadolint are the real validators, run by hand where they exist (README, "Docker (HAPI FHIR)").
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
COMPOSE = (ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8")


def instructions(name: str) -> list[str]:
    return re.findall(rf"^{name}\s+(.+?)\s*$", DOCKERFILE, flags=re.MULTILINE)


def test_base_images_are_pinned_python_311_and_node_20() -> None:
    args = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", DOCKERFILE, flags=re.MULTILINE))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    assert re.fullmatch(r"node:20\.\d+\.\d+-bookworm-slim", args["NODE_IMAGE"])
    for image in instructions("FROM"):
        assert image.split()[0] in ("${PYTHON_IMAGE}", "${NODE_IMAGE}"), image
    assert "latest" not in DOCKERFILE and "latest" not in COMPOSE


def test_runs_as_non_root_with_readyz_healthcheck() -> None:
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert DOCKERFILE.rindex("USER ") > DOCKERFILE.rindex("RUN ")  # nothing runs as root after it
    health = instructions("HEALTHCHECK")
    assert len(health) == 1
    assert "/readyz" in DOCKERFILE[DOCKERFILE.index("HEALTHCHECK"):]
    assert instructions("EXPOSE") == ["8080"]
    assert instructions("CMD")[-1] == '["trial-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]'


def test_engine_packages_and_data_where_the_package_looks() -> None:
    assert "npm ci --omit=dev" in DOCKERFILE
    assert re.search(r"COPY --from=engine /engine/node_modules /opt/venv/lib/python3\.11/site-packages/cds/engine/node_modules",
                     DOCKERFILE)
    assert "TRIAL_CDS_HOME=/app" in DOCKERFILE
    assert "COPY rules ./rules" in DOCKERFILE and "COPY fhir_bundles ./fhir_bundles" in DOCKERFILE
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    for needed in ("!pyproject.toml", "!cds/", "!rules/", "!fhir_bundles/", "**/node_modules"):
        assert needed in ignore


def test_compose_pins_hapi_r4_and_wires_loader_and_service() -> None:
    assert re.search(r"image: hapiproject/hapi:v\d+\.\d+\.\d+\s", COMPOSE)
    assert "hapi.fhir.fhir_version: R4" in COMPOSE
    assert '"trial-cds", "publish", "http://hapi:8080/fhir", "--patients"' in COMPOSE
    assert re.search(r"loader:\n(?:.*\n)*?\s+restart: \"no\"", COMPOSE)
    assert re.search(r"depends_on:\n\s+loader:\n\s+condition: service_completed_successfully", COMPOSE)
    assert "TRIAL_CDS_FHIR_ALLOWLIST: http://hapi:8080/fhir" in COMPOSE
    assert "TRIAL_CDS_DB: /data/trial-cds.sqlite" in COMPOSE
    assert "TRIAL_CDS_INSECURE" in COMPOSE and "LOCAL DEMO ONLY" in COMPOSE and "TRIAL_CDS_TRUSTED_ISSUERS" in COMPOSE
