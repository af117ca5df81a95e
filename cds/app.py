"""The FastAPI app factory: lifespan, middleware, error handlers, routers. Nothing else.

Where things live: CDS Hooks routes in cds/hooks/routes.py (one call's flow in
cds/hooks/patient_view.py), health/readiness/reload in cds/web/ops.py, authentication and
state as dependencies in cds/web/deps.py, request bodies in cds/web/body.py, the loaded
catalogue in cds/ruleset.py, the running state in cds/state.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from . import __version__
from .hooks.routes import SERVICE_ID
from .hooks.routes import router as hooks_router
from .settings import Settings
from .smart.routes import install as install_clinician_view
from .state import State, build_state
from .web import access_log
from .web.errors import ApiError, install_error_handlers
from .web.ops import router as ops_router

__all__ = ["SERVICE_ID", "ApiError", "State", "build_state", "create_app"]

log = logging.getLogger("trial_cds")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.insecure:
            log.warning("INSECURE MODE: hooks are accepted without a JWT. Never use this with real patient data.")
        state = build_state(settings)
        app.state.cds = state
        if state.verifier is not None:
            state.verifier.keys.warm()
        await asyncio.to_thread(state.engine.start)
        state.ready = True
        log.info("trial-cds ready: %d trials, %d CQL workers", len(state.catalogue.trials), len(state.engine.pool.pids))
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="trial-cds", version=__version__, lifespan=lifespan,
                  description="CDS Hooks 2.0 service: clinical trials a patient may join, with evidence per criterion.")
    access_log.install()
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    install_error_handlers(app)
    app.include_router(hooks_router)
    app.include_router(ops_router)
    install_clinician_view(app)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the `$defs` of hand-documented request bodies moved to components."""
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for path in doc.get("paths", {}).values():
            for op in path.values():
                content = op.get("requestBody", {}).get("content", {})
                for media in content.values():
                    schema = media.get("schema", {})
                    schemas.update(schema.pop("$defs", {}))
                    title = schema.get("title")
                    if title and "$ref" not in schema:
                        schemas.setdefault(title, schema)
                        media["schema"] = {"$ref": f"#/components/schemas/{title}"}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    return app
