"""The `trial-cds` command line (typer)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .paths import ELM_DIR, RULES_DIR

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Clinical-trial eligibility as CDS Hooks over FHIR R4.")
err = Console(stderr=True)


@app.command()
def build(
    rules: Annotated[Path, typer.Option(help="Directory of CQL libraries")] = RULES_DIR,
    elm: Annotated[Path, typer.Option(help="Where the compiled ELM goes")] = ELM_DIR,
) -> None:
    """Translate every rules/*.cql to ELM JSON with the official CQL translator."""
    from .build import compile_rules
    from .engine.translator import TranslationError

    try:
        report = compile_rules(rules, elm)
    except TranslationError as exc:
        err.print(f"[red]CQL translation failed[/red]\n{exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    err.print(f"ELM: {len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.removed)} removed")


def _read_bundle(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        err.print(f"no such file: {path}")
        raise typer.Exit(2) from None
    except json.JSONDecodeError as exc:
        err.print(f"{path} is not JSON: {exc}")
        raise typer.Exit(2) from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        err.print(f"{path} is not a FHIR Bundle")
        raise typer.Exit(2)
    return doc


def _parse_at(at: str | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    try:
        value = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"--at is not an ISO date-time: {at}")
        raise typer.Exit(2) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A patient's FHIR Bundle (JSON)")],
    at: Annotated[str | None, typer.Option(help="Evaluation date-time (ISO); default now")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")] = False,
    library: Annotated[list[str] | None, typer.Option(help="Evaluate these CQL libraries (raw defines) instead of the trials")] = None,
) -> None:
    """Evaluate one patient's Bundle and print every define of the given libraries."""
    from .engine import Engine, EngineError

    doc = _read_bundle(bundle)
    when = _parse_at(at)
    names = list(library or [])
    if not names:
        err.print("no trials are in the catalogue yet; name libraries with --library")
        raise typer.Exit(2)
    with Engine.from_directory(ELM_DIR, pool_size=1) as engine:
        try:
            result = engine.evaluate(doc, names, when)
        except EngineError as exc:
            err.print(f"evaluation failed: {exc}")
            raise typer.Exit(1) from None
    json.dump(result.raw, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":  # pragma: no cover
    app()
