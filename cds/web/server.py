"""How the app is served (uvicorn), the same for `trial-cds serve`, the demo and the tests."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

# h11 refuses request heads larger than this with its own 400 before the app sees them. The
# default (16 KiB) would answer an oversized bearer token with "Invalid HTTP request" instead
# of the service's 401; 2 MiB per connection in flight is a bounded price for a clear answer.
MAX_REQUEST_HEAD_BYTES = 2 * 1024 * 1024


def uvicorn_config(app: FastAPI, host: str, port: int, **options: Any) -> uvicorn.Config:
    options.setdefault("h11_max_incomplete_event_size", MAX_REQUEST_HEAD_BYTES)
    options.setdefault("http", "h11")
    options.setdefault("proxy_headers", False)
    options.setdefault("server_header", False)
    return uvicorn.Config(app, host=host, port=port, **options)
