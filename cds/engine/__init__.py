"""The CQL engine: translation (official translator) and execution (reference JS engine)."""

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
