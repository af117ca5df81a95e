"""The committed ELM and bundles are what the build makes from rules/ now."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cds.build import stale_elm
from cds.bundles import drifted_bundles, validate
from cds.cli import app
from cds.engine.elm import define_names
from cds.fhir.systems import EXT_CQF_EXPRESSION
from cds.paths import BUNDLES_DIR


def test_committed_elm_matches_its_cql() -> None:
    assert stale_elm() == [], "ELM is stale: run `trial-cds build` and commit rules/elm"


def test_committed_bundles_match_rules() -> None:
    assert drifted_bundles() == [], "bundles drifted from rules/: run `trial-cds build` and commit fhir_bundles"


def _bundle_files() -> list[Path]:
    return sorted(BUNDLES_DIR.glob("*.json"))


@pytest.mark.parametrize("path", _bundle_files(), ids=lambda p: p.name)
def test_bundle_is_a_valid_r4_transaction_of_puts(path: Path) -> None:
    bundle = json.loads(path.read_text())
    validate(bundle)
    assert bundle["type"] == "transaction"
    for entry in bundle["entry"]:
        res = entry["resource"]
        validate(res)
        assert entry["request"] == {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}


@pytest.mark.parametrize("path", _bundle_files(), ids=lambda p: p.name)
def test_every_cqf_expression_names_a_define_of_its_library(path: Path) -> None:
    bundle = json.loads(path.read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    libraries = {}
    for lib in (r for r in resources if r["resourceType"] == "Library"):
        elm_content = next(c for c in lib["content"] if c["contentType"] == "application/elm+json")
        cql_content = next(c for c in lib["content"] if c["contentType"] == "text/cql")
        assert base64.b64decode(cql_content["data"]).decode().lstrip().startswith(("/*", "library", "//"))
        libraries[lib["url"]] = set(define_names(json.loads(base64.b64decode(elm_content["data"]))))
    groups = [r for r in resources if r["resourceType"] == "Group"]
    for group in groups:
        assert group["actual"] is False and group["type"] == "person"
        for ch in group["characteristic"]:
            expr = next(e["valueExpression"] for e in ch["extension"] if e["url"] == EXT_CQF_EXPRESSION)
            assert expr["language"] == "text/cql.identifier"
            assert expr["expression"] in libraries[expr["reference"]], expr


def test_translation_error_names_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "Broken.cql").write_text("library Broken version '1'\n\ndefine X: 1 + 'a'\n")
    result = CliRunner().invoke(app, ["build", "--rules", str(rules), "--elm", str(tmp_path / "elm"),
                                      "--bundles", str(tmp_path / "bundles")])
    assert result.exit_code == 1
    assert "Broken.cql:3" in result.output
    assert "Add" in result.output


def test_library_must_live_in_a_file_of_its_name(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "Wrong.cql").write_text("library Right version '1'\ndefine X: 1\n")
    result = CliRunner().invoke(app, ["build", "--rules", str(rules), "--elm", str(tmp_path / "elm"),
                                      "--bundles", str(tmp_path / "bundles")])
    assert result.exit_code == 1
    assert "must live in Right.cql" in result.output
