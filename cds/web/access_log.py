"""Access-log hygiene: uvicorn's access log never prints a query string.

Why: a client that puts a token in the URL (`?access_token=...`, a SMART callback's `code=`)
would otherwise leave it in every log shipper downstream. The service reads nothing from
query strings, so the path alone is what an operator needs.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class DropQueryString(logging.Filter):
    """Rewrites uvicorn's access record `(client, method, path?query, version, status)` to the path."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<redacted>", *args[3:])
        return True


def install() -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, DropQueryString) for f in logger.filters):
        logger.addFilter(DropQueryString())
