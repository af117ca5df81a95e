"""The reference engine's patches (cds/engine/patches/): switchable, checked at start, and
without effect on any answer.

retrieve-code-lists is a correctness patch the rules need today (retrieves over List<Code>
defines); the others only save time. With the performance patches switched off, every define
of every library on every synthetic patient must come out the same, on both engines (the
compiled engine shares one helper with them, the distinct-list key).
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest

from cds.engine.engine import execution_time
from cds.engine.pool import ENGINE_DIR, EngineUnavailable, WorkerPool, node_command
from cds.engine.trim import trim_bundle
from cds.engine.values import decode
from cds.paths import BUNDLES_DIR
from tests.compiled.conftest import Rules

AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
ALL = ["retrieve-code-lists", "lean-execute", "shared-library-contexts", "fhir-distinct-keys", "overload-memo",
       "fhir-object-cache"]
CORRECTNESS_ONLY = "retrieve-code-lists"


def _evaluate_all(rules: Rules, patches: str, engine: str) -> dict[str, Any]:
    names = rules.names
    requirements = rules.requirements()
    out = {}
    with WorkerPool(rules.libraries, size=1, engine=engine, patches=patches, value_sets=rules.value_sets,
                    timeout=120.0) as pool:
        assert pool.load_info["patches"] == (ALL if patches == "all" else [CORRECTNESS_ONLY])
        for path in sorted((BUNDLES_DIR / "patients").glob("*.json")):
            bundle = trim_bundle(json.loads(path.read_text(encoding="utf-8")), requirements)
            reply = pool.request({"op": "evaluate", "libraries": names, "bundle": bundle, "engine": engine,
                                  "executionDateTime": execution_time(AT), "fallback": False, "includePatient": True})
            out[path.stem] = {lib: {d: decode(v) for d, v in defs.items()} for lib, defs in reply["results"].items()}
    return out


def test_results_identical_with_and_without_performance_patches(rules: Rules) -> None:
    patched = _evaluate_all(rules, "all", "reference")
    assert len(patched) >= 20
    for engine in ("reference", "compiled"):
        bare = _evaluate_all(rules, CORRECTNESS_ONLY, engine)
        assert bare.keys() == patched.keys()
        for patient, libs in patched.items():
            for lib, defines in libs.items():
                assert bare[patient][lib].keys() == defines.keys()
                for define, value in defines.items():
                    assert bare[patient][lib][define] == value, f"{engine}: {patient} {lib}.{define}"


def test_unknown_patch_name_refuses_to_start() -> None:
    with pytest.raises(EngineUnavailable, match="unknown patches: no-such-patch"):
        WorkerPool({}, size=1, patches="no-such-patch", start_timeout=30.0).start()


def _check(target: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = ("import { checkTarget } from './patches/check.mjs';"
              f"checkTarget('probe', {json.dumps(target)}); console.log('ok');")
    return subprocess.run([node_command()[0], "--input-type=module", "-e", script], cwd=ENGINE_DIR,
                          capture_output=True, text=True, timeout=60)


def test_patch_check_refuses_other_versions_and_other_text() -> None:
    good = {"package": "cql-execution", "version": "3.3.2", "file": "lib/elm/external.js",
            "sha256": "fe4e16681b89069860d463457c5048c97f7c3857a59954722fa8672019ca8776"}
    assert _check(good).stdout.strip() == "ok"
    wrong_version = _check({**good, "version": "3.3.1"})
    assert wrong_version.returncode != 0 and "3.3.2 is installed" in wrong_version.stderr
    wrong_text = _check({**good, "sha256": "0" * 64})
    assert wrong_text.returncode != 0 and "is not the reviewed text" in wrong_text.stderr
