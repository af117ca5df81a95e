"""The catalogue in use: trials, their compiled libraries, the engine running them, and what
is derived from them (prefetch queries, orderable codes, the population-gate library).

Why one object: `POST /admin/reload` builds a new RuleSet off the request path, starts its
engine, and swaps it in atomically; a hook call holds the RuleSet it started with until it
answers, and the old engine closes when its last call has finished. Nothing here knows about
HTTP: the web layer and the command line both build a RuleSet from Settings.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .catalogue import Catalogue
from .engine import Engine
from .engine.elm import define_names, orderable_codes
from .hooks.prefetch import PrefetchQuery, prefetch_queries
from .settings import Settings
from .terminology.txserver import with_terminology_server

log = logging.getLogger(__name__)

# A library defining this is the catalogue's population gate (e.g. "has active SLE at all"):
# a patient outside it gets no card without running every trial.
SCREEN_DEFINE = "In Catalogue Population"


@dataclass(eq=False)
class RuleSet:
    """One loaded catalogue with its engine and what is derived from it; replaced whole on reload."""

    catalogue: Catalogue
    engine: Engine
    queries: list[PrefetchQuery] = field(default_factory=list)
    orderable: set[tuple[str, str]] = field(default_factory=set)
    screen_library: str | None = None
    _users: int = 0
    _retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and self._users == 0
        if close:
            self._close()

    def retire(self) -> None:
        """No new calls; the engine closes now, or when the last call using it finishes."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
            close = self._users == 0
        if close:
            self._close()

    def _close(self) -> None:
        try:
            self.engine.close()
        except Exception:  # a failing close must not fail the call that released it
            log.exception("closing a retired CQL engine failed")


def load_catalogue(settings: Settings) -> Catalogue:
    """The catalogue from TRIAL_CDS_CATALOGUE: a bundles directory or a FHIR base URL."""
    source = settings.catalogue
    if source.startswith(("http://", "https://")):
        from .fhir.catalogue import catalogue_from_server

        return catalogue_from_server(source, token=settings.catalogue_token, timeout=settings.fetch_timeout)
    return Catalogue.from_directory(Path(source))


def screen_library(catalogue: Catalogue) -> str | None:
    """The library that defines SCREEN_DEFINE, if the catalogue has one."""
    for name, elm in catalogue.libraries.items():
        if SCREEN_DEFINE in define_names(elm):
            return name
    return None


def build_ruleset(settings: Settings) -> RuleSet:
    """Load the catalogue and derive everything from it; the engine is built but not started."""
    catalogue = with_terminology_server(load_catalogue(settings), settings.terminology_url,
                                        timeout=settings.fetch_timeout)
    screen = screen_library(catalogue)
    names = catalogue.trial_libraries + ([screen] if screen else [])
    queries = prefetch_queries(catalogue.libraries, names, catalogue.value_sets) if names else []
    orderable = orderable_codes(catalogue.libraries, catalogue.value_sets)
    engine = Engine(catalogue.libraries, pool_size=settings.pool_size, timeout=settings.cql_timeout,
                    value_sets=catalogue.value_sets)
    return RuleSet(catalogue=catalogue, engine=engine, queries=queries, orderable=orderable, screen_library=screen)
