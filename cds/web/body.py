"""Request bodies: JSON only, size-capped while streaming, strict UTF-8, validated by a model.

Why by hand rather than a FastAPI body parameter: the cap must hold before the body is in
memory (a 100 MB POST is refused after the first bytes past the limit, not after reading it
all), the media type must be checked (a cross-origin `text/plain` POST must not be taken as
JSON), and the 400 must say what was wrong without echoing the client's text whole.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from .errors import ApiError, describe

M = TypeVar("M", bound=BaseModel)

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_JSON_MEDIA = re.compile(r"^application/(?:[\w.+-]+\+)?json\Z")


def _check_media_type(request: Request) -> None:
    content_type = request.headers.get("content-type")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not _JSON_MEDIA.match(media):
        shown = "none" if content_type is None else repr(content_type[:64])
        raise ApiError(415, f"Content-Type must be application/json (got {shown})")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise ApiError(413, f"request body larger than {max_bytes} bytes")
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body larger than {max_bytes} bytes")
    return bytes(body)


async def json_body(request: Request, model: type[M], max_bytes: int) -> M:
    _check_media_type(request)
    return parse_body(await read_body(request, max_bytes), model)


def parse_body(raw: bytes, model: type[M]) -> M:
    try:
        # Strict UTF-8 (RFC 8259): json.loads(bytes) would also take UTF-16 and "surrogatepass"
        # byte sequences, whose strings can then not be written to a response, a log or SQLite.
        text = raw.decode("utf-8-sig")
        doc: Any = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):  # \ud83d\ude00 pairs are fine; a lone \ud800 is not text
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            raise ApiError(400, "request body holds an unpaired UTF-16 surrogate escape") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ApiError(400, describe(exc.errors())) from None
