"""Operations: liveness, readiness, and swapping in a new catalogue (`POST /admin/reload`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..ruleset import build_ruleset
from ..state import State
from .deps import AdminAuth, StateDep
from .errors import ApiError, error_responses

log = logging.getLogger("trial_cds")
router = APIRouter(tags=["ops"])


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers (nothing here waits on a worker, a store or the network)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: a catalogue with trials and running CQL workers; the issuers' key status."""
    state: State | None = getattr(request.app.state, "cds", None)
    ok = bool(state and state.ready and state.engine.pool.ready and state.catalogue.trials)
    body: dict[str, Any] = {
        "ready": ok,
        "trials": len(state.catalogue.trials) if state else 0,
        "workers": len(state.engine.pool.pids) if state else 0,
        "catalogueProblems": state.catalogue.problems if state else [],
        "terminology": state.catalogue.terminology if state else {},
    }
    if state and state.verifier is not None:
        body["issuerKeys"] = state.verifier.keys.status()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.post("/admin/reload", dependencies=[Depends(AdminAuth("/admin/reload"))],
             responses=error_responses(401, 503))
async def reload(state: StateDep) -> JSONResponse:
    """Read the catalogue again (bundles directory or FHIR server) and swap it in.

    Answers {"trials": [ids], "problems": [...]}; when the new catalogue cannot be loaded, has no
    trial, or its engine does not start, the old one stays in use and the answer is 503."""
    async with state.reload_lock:
        started = time.perf_counter()
        try:
            new = await asyncio.to_thread(build_ruleset, state.settings)
        except Exception as exc:
            log.warning("catalogue reload failed; keeping the current catalogue: %s", _reason(exc))
            raise ApiError(503, f"reload failed, the previous catalogue stays in use: {_reason(exc)}") from None
        if not new.catalogue.trials:
            new.retire()
            problems = "; ".join(new.catalogue.problems[:5]) or "no active ResearchStudy"
            log.warning("catalogue reload found no usable trial; keeping the current catalogue: %s", problems)
            raise ApiError(503, f"reload failed, the previous catalogue stays in use: no usable trial ({problems})")
        try:
            await asyncio.to_thread(new.engine.start)
        except Exception as exc:
            new.retire()
            log.warning("new CQL engine did not start; keeping the current catalogue: %s", _reason(exc))
            raise ApiError(503, f"reload failed, the previous catalogue stays in use: {_reason(exc)}") from None
        state.swap(new)
    log.info("catalogue reloaded in %.0f ms: %d trials, %d problems", (time.perf_counter() - started) * 1000,
             len(new.catalogue.trials), len(new.catalogue.problems))
    return JSONResponse({"trials": [t.id for t in new.catalogue.trials], "problems": new.catalogue.problems})
