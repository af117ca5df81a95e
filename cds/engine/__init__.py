"""The CQL engine: translation (official translator) and execution (Node workers running the
compiled engine over cql-execution's runtime, with the reference engine as its oracle and fallback)."""

from .engine import Engine, EvaluationResult, load_elm_dir
from .pool import EngineError, EngineTimeout, EngineUnavailable, WorkerPool

__all__ = [
    "Engine",
    "EngineError",
    "EngineTimeout",
    "EngineUnavailable",
    "EvaluationResult",
    "WorkerPool",
    "load_elm_dir",
]
