"""Every failure has an answer: a JSON body `{"error": ...}` and the right status, never a traceback.

400 malformed request, 401 authentication failed, 405 (with `Allow`), 412 data unavailable,
413 too large, 415 not JSON, 503 engine or catalogue unavailable (also for anything unexpected:
the request was not processed, and the log has the traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("trial_cds")


class ApiError(Exception):
    """An answer other than 200, with a message for the client (never a secret, never a traceback)."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class ErrorBody(BaseModel):
    """What every non-200 answer carries (OpenAPI)."""

    error: str
    correlationId: str | None = None


def describe(errors: Sequence[Any]) -> str:
    """Pydantic errors as one line; keys are the client's text, so each is cut short."""
    parts = []
    for e in list(errors)[:5]:
        loc = ".".join(str(x)[:64] for x in e.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the given error statuses."""
    meaning = {400: "malformed request", 401: "authentication failed", 412: "patient data unavailable",
               413: "request body or patient record too large", 415: "Content-Type is not application/json",
               503: "eligibility rules or catalogue unavailable"}
    return {s: {"model": ErrorBody, "description": meaning.get(s, "error")} for s in statuses}


def json_request(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for a route that reads its body itself (cds.web.body)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe(exc.errors())}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Keep the exception's headers: a 405 must say which methods are allowed (RFC 9110 `Allow`).
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the request was not processed"}, status_code=503)
