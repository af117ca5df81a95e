"""The engine's failures, shared by the worker pool, the translator and their JSON-lines client."""

from __future__ import annotations


class EngineError(RuntimeError):
    """The CQL engine could not answer: a worker crashed, hung, or the request was invalid."""


class EngineTimeout(EngineError):
    """The call did not finish within its timeout; the worker was replaced."""


class EngineUnavailable(EngineError):
    """No worker could be had (the pool is closed or could not start)."""
