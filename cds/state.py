"""What a running service holds: settings, the rule set in use, the store, the JWT verifier.

Why a separate module: routes (cds/hooks/routes.py, cds/web/ops.py) and dependencies
(cds/web/deps.py) all read it, and none of them should own it; `create_app` builds it in
the lifespan and closes it there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .auth import JwtVerifier
from .catalogue import Catalogue
from .engine import Engine
from .hooks.prefetch import PrefetchQuery
from .ruleset import RuleSet, build_ruleset
from .settings import Settings
from .store import Store


@dataclass
class State:
    """Everything loaded at start-up and shared by requests; `rules` is swapped by a reload."""

    settings: Settings
    rules: RuleSet
    store: Store
    verifier: JwtVerifier | None
    ready: bool = False
    _swap_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    # SQLite writes get their own thread: in the default executor they would queue behind hook
    # calls waiting for a CQL worker, holding every finished answer until the queue drains.
    store_thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="trial-cds-store"))

    async def in_store_thread(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.store_thread, partial(fn, *args, **kwargs))

    async def claim_jti(self, issuer: str, jti: str, expires: float) -> bool:
        """The durable replay guard (cds.auth.ReplayGuard), written off the event loop."""
        return bool(await self.in_store_thread(self.store.claim_jti, issuer, jti, expires))

    # The current rules, for code that reads one field (discovery, readiness, tests).
    @property
    def catalogue(self) -> Catalogue:
        return self.rules.catalogue

    @property
    def engine(self) -> Engine:
        return self.rules.engine

    @property
    def queries(self) -> list[PrefetchQuery]:
        return self.rules.queries

    @property
    def screen_library(self) -> str | None:
        return self.rules.screen_library

    @contextmanager
    def using_rules(self) -> Iterator[RuleSet]:
        """The current rules, kept open (engine running) until the block ends, whatever a reload does."""
        with self._swap_lock:
            rules = self.rules
            rules.acquire()
        try:
            yield rules
        finally:
            rules.release()

    def swap(self, new: RuleSet) -> RuleSet:
        """Make `new` current; the old rules close once their last call finishes. Returns the old."""
        with self._swap_lock:
            old, self.rules = self.rules, new
        old.retire()
        return old

    def close(self) -> None:
        self.ready = False
        self.rules.retire()
        if self.verifier is not None:
            self.verifier.close()
        self.store_thread.shutdown(wait=True)
        self.store.close()


def build_state(settings: Settings) -> State:
    rules = build_ruleset(settings)
    store = Store(settings.db)
    verifier = None if settings.insecure else JwtVerifier(
        settings.trusted_issuers, leeway=settings.jwt_leeway, max_lifetime=settings.jwt_max_lifetime)
    return State(settings=settings, rules=rules, store=store, verifier=verifier)
