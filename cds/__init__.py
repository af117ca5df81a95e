"""trial-cds: clinical-trial eligibility as a CDS Hooks service over FHIR R4, rules in CQL.

The Python API in one call: `cds.evaluate(bundle, libraries, at)` evaluates every define of
the named CQL libraries (compiled in rules/elm) for one patient Bundle and returns typed
results; `cds.evaluate_trials(bundle, at)` gives the per-trial verdicts of the catalogue.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .eligibility import TrialResult
    from .engine import Engine, EvaluationResult

try:  # one source of truth: pyproject.toml, through the installed package's metadata
    __version__ = _metadata.version("trial-cds")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_lock = threading.Lock()
_default: dict[str, Any] = {}


def default_engine() -> Engine:
    """A process-wide engine over every compiled library in rules/elm (started on first use)."""
    from .engine import Engine
    from .paths import ELM_DIR

    with _lock:
        if "engine" not in _default:
            _default["engine"] = Engine.from_directory(ELM_DIR).start()
        engine: Engine = _default["engine"]
        return engine


def evaluate(bundle: Mapping[str, Any], libraries: Sequence[str], at: datetime | str) -> EvaluationResult:
    """Every define of `libraries` for one patient Bundle, evaluated as of `at`."""
    return default_engine().evaluate(bundle, list(libraries), at)


def evaluate_trials(bundle: Mapping[str, Any], at: datetime | str) -> list[TrialResult]:
    """The verdict of every trial in fhir_bundles/ for one patient Bundle, as of `at`."""
    from .catalogue import Catalogue
    from .eligibility import evaluate_trials as _evaluate_trials
    from .engine import Engine
    from .paths import BUNDLES_DIR

    with _lock:
        if "catalogue" not in _default:
            catalogue = Catalogue.from_directory(BUNDLES_DIR)
            _default["catalogue"] = catalogue
            _default["trials_engine"] = Engine(catalogue.libraries).start()
    return _evaluate_trials(_default["trials_engine"], _default["catalogue"], bundle, at)


__all__ = ["default_engine", "evaluate", "evaluate_trials"]
