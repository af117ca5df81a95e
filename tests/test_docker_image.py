"""What can break the Docker image, checked without a Docker engine (none runs on this machine).

1. Every `COPY` from the build context names files that exist and that `.dockerignore` lets
   through (a file the image needs but the context leaves out breaks the build or, worse, the
   running service).
2. A rehearsal of the image's run-time layout: the package built as a wheel and installed
   non-editable (as `pip install .` does in the image), the engine's `node_modules` beside the
   installed package, the data under `TRIAL_CDS_HOME`, started from another working directory
   with the image's CMD; the image's own HEALTHCHECK command must then pass and a hook answer.
3. hadolint, when it is installed.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        name, _, args = text.partition(" ")
        out.append((name.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage (the image that runs)."""
    steps = instructions()
    start = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[start:]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        regex = fnmatch.translate(pat).replace(".*.*", ".*")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.match(regex, p) for p in prefixes) or (pat.startswith("**/") and
                                                          any(re.match(fnmatch.translate(pat[3:]), p) for p in parts)):
            result = not negate
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def context_copies() -> list[list[str]]:
    """Sources of every COPY that reads the build context (not --from=<stage>)."""
    out = []
    for name, args in instructions():
        if name == "COPY" and "--from=" not in args:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            out.append(parts[:-1])
    return out


def test_every_copy_from_the_context_exists_and_is_not_ignored() -> None:
    patterns = dockerignore()
    copies = context_copies()
    assert copies, "the Dockerfile copies nothing from the context?"
    for sources in copies:
        for src in sources:
            path = ROOT / src
            assert path.exists(), f"COPY {src}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            kept = [f for f in files if not ignored(str(f.relative_to(ROOT)), patterns)]
            assert kept, f"COPY {src}: .dockerignore leaves nothing of it in the build context"
            if path.is_file():
                assert kept == [path], f"COPY {src}: excluded by .dockerignore"


def test_what_the_service_reads_is_in_the_context() -> None:
    patterns = dockerignore()
    for needed in ("pyproject.toml", "cds/engine/worker.mjs", "cds/engine/package-lock.json",
                   "rules/elm/SLECommon.json", "fhir_bundles/catalogue.json"):
        assert not ignored(needed, patterns), needed
    assert ignored("cds/engine/node_modules/cql-execution/package.json", patterns), "node_modules come from npm ci"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The image's /opt/venv, /app and /data, rehearsed in temporary directories."""
    tmp = tmp_path_factory.mktemp("image")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    site = tmp / "site-packages"
    wheel = next(wheels.glob("trial_cds-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    # COPY --from=engine /engine/node_modules .../site-packages/cds/engine/node_modules
    (site / "cds" / "engine" / "node_modules").symlink_to(ROOT / "cds" / "engine" / "node_modules")
    app = tmp / "app"
    app.mkdir()
    for name, args in final_stage():  # the runtime stage's `COPY rules ./rules` etc.
        if name == "COPY" and "--from=" not in args:
            *sources, dst = [p for p in shlex.split(args) if not p.startswith("--")]
            for src in sources:
                target = app / dst if len(sources) == 1 else app / dst / Path(src).name
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / src, target)
    data = tmp / "data"
    data.mkdir()
    yield {"site": site, "app": app, "data": data, "tmp": tmp}


def test_the_installed_package_carries_what_it_runs(image_layout: dict[str, Path]) -> None:
    engine = image_layout["site"] / "cds" / "engine"
    for name in ("worker.mjs", "translate.mjs", "package.json", "package-lock.json"):
        assert (engine / name).is_file(), f"{name} is not package data"


def test_the_image_cmd_serves_and_its_healthcheck_passes(image_layout: dict[str, Path]) -> None:
    cmd = json.loads(next(args for name, args in instructions() if name == "CMD"))
    health = next(args for name, args in instructions() if name == "HEALTHCHECK")
    health_cmd = json.loads(health[health.index("CMD") + 3:].strip())
    port = _free_port()
    assert cmd[0] == "trial-cds"
    serve = [sys.executable, "-m", "cds.cli", *cmd[1:]]
    serve[serve.index("--port") + 1] = str(port)
    serve[serve.index("--host") + 1] = "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAL_CDS_")}
    env.update({"PYTHONPATH": str(image_layout["site"]), "TRIAL_CDS_HOME": str(image_layout["app"]),
                "TRIAL_CDS_DB": str(image_layout["data"] / "trial-cds.sqlite"), "TRIAL_CDS_INSECURE": "true",
                "TRIAL_CDS_POOL_SIZE": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    log = (image_layout["tmp"] / "serve.log").open("wb")
    proc = subprocess.Popen(serve, cwd=image_layout["data"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = [sys.executable if a == "python" else a for a in health_cmd]
        probe[-1] = probe[-1].replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (image_layout["tmp"] / "serve.log").read_text()[-3000:]
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                break
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.5)
        # The running code is the installed copy, not the checkout.
        out = subprocess.run([sys.executable, "-c", "import cds, sys; print(cds.__file__)"], env=env,
                             capture_output=True, text=True, timeout=60, cwd=image_layout["data"])
        assert out.stdout.strip().startswith(str(image_layout["site"])), out.stdout
        body = json.loads((ROOT / "fhir_bundles" / "patients" / "hooks" / "no-sle.json").read_text(encoding="utf-8"))
        resp = requests.post(f"http://127.0.0.1:{port}/cds-services/sle-car-t-trials", json=body, timeout=120)
        assert resp.status_code == 200 and resp.json() == {"cards": []}, resp.text[:500]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_hadolint_finds_nothing_when_installed() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        return  # not installed here: the checks above still ran
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
