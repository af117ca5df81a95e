"""Readable terminal output of trial verdicts (rich)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .catalogue import Catalogue
from .eligibility import CriterionResult, TrialResult

VERDICT_STYLE = {"likely-eligible": "bold green", "possibly-eligible": "bold yellow", "excluded": "bold red"}
STATUS_STYLE = {"met": "green", "not-met": "red", "unknown": "yellow"}


def evidence_text(c: CriterionResult) -> str:
    parts = []
    for e in c.evidence:
        bits = [str(b) for b in (e.value, e.unit) if b not in (None, "")]
        line = " ".join(bits)
        if e.date:
            line += f" ({e.date[:10]})"
        if e.note:
            line = f"{line}: {e.note}" if line else e.note
        parts.append(line)
    if c.missing:
        parts.append("missing: " + ", ".join(f"{m.display or m.code} [{m.code}]" for m in c.missing[:3]))
    return "\n".join(parts)


def print_results(console: Console, catalogue: Catalogue, results: Sequence[TrialResult], at: datetime) -> None:
    console.print(f"Evaluated {len(results)} trials as of {at.isoformat()}")
    for r in results:
        trial = catalogue.trial(r.researchStudy)
        title = Text.assemble((f"{trial.id}", "bold"), "  ", (r.verdict, VERDICT_STYLE[r.verdict]))
        table = Table(title=title, title_justify="left", show_lines=False, expand=True)
        table.add_column("criterion", no_wrap=True)
        table.add_column("type")
        table.add_column("status", no_wrap=True)
        table.add_column("evidence", ratio=3)
        for c in r.criteria:
            table.add_row(c.id, c.type, Text(c.status, STATUS_STYLE[c.status]), evidence_text(c))
        console.print(table)
        if trial.page:
            console.print(f"  {trial.title}\n  {trial.page}")
