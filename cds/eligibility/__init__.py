"""From CQL results to per-trial verdicts (criteria, evidence, missing data)."""

from .models import Coding, CriterionResult, Evidence, TrialResult, Verdict
from .verdict import criterion_result, decide, evaluate_trials

__all__ = [
    "Coding",
    "CriterionResult",
    "Evidence",
    "TrialResult",
    "Verdict",
    "criterion_result",
    "decide",
    "evaluate_trials",
]
