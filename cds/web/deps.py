"""FastAPI dependencies: the service state, and who is calling.

A failed authentication answers 401 with only "authentication failed" and a correlation id;
the reason goes to the log under that id (it would otherwise tell trusted issuers from
untrusted ones, echo the kid, or name a network error to a scanner).
"""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Annotated, Any

from fastapi import Depends, Request

from ..auth import AuthError
from ..state import State
from .errors import ApiError

log = logging.getLogger("trial_cds")


def get_state(request: Request) -> State:
    state: State = request.app.state.cds
    return state


StateDep = Annotated[State, Depends(get_state)]


def refuse_authentication(endpoint: str, reason: str) -> ApiError:
    """401 with a correlation id; the reason goes to the log under it, never to the client."""
    cid = uuid.uuid4().hex[:16]
    log.warning("authentication failed [%s] on %s: %s", cid, endpoint, reason)
    return ApiError(401, "authentication failed", headers={"WWW-Authenticate": "Bearer"},
                    extra={"correlationId": cid})


class ClientAuth:
    """A CDS client JWT whose `aud` is this endpoint's public URL (no check in insecure mode)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def __call__(self, request: Request) -> dict[str, Any] | None:
        return await verify_client(get_state(request), request, self.endpoint)


async def verify_client(state: State, request: Request, endpoint: str) -> dict[str, Any] | None:
    if state.verifier is None:
        return None
    audience = f"{state.settings.base_url}{endpoint}"
    try:
        return await state.verifier.verify(request.headers.get("authorization"), audience, state.claim_jti)
    except AuthError as exc:
        raise refuse_authentication(endpoint, exc.reason) from None


class AdminAuth:
    """A bearer equal to TRIAL_CDS_ADMIN_TOKEN, or a CDS Hooks JWT with aud = this endpoint's URL.

    Insecure mode: the admin token when one is set, else open (local demos only)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    async def __call__(self, request: Request) -> None:
        state = get_state(request)
        admin = state.settings.admin_token
        scheme, _, value = (request.headers.get("authorization") or "").partition(" ")
        if admin and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8"),
                                                                        admin.encode("utf-8")):
            return
        if state.verifier is None:
            if admin:
                raise refuse_authentication(self.endpoint, "no or wrong admin token")
            return
        await verify_client(state, request, self.endpoint)
