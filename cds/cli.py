"""The `trial-cds` command line (typer)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from .paths import BUNDLES_DIR, ELM_DIR, RULES_DIR

if TYPE_CHECKING:
    from .catalogue import Catalogue
    from .settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Clinical-trial eligibility as CDS Hooks over FHIR R4.")
err = Console(stderr=True)


@app.command()
def build(
    rules: Annotated[Path, typer.Option(help="Directory of CQL libraries")] = RULES_DIR,
    elm: Annotated[Path, typer.Option(help="Where the compiled ELM goes")] = ELM_DIR,
    bundles: Annotated[Path, typer.Option(help="Where the FHIR bundles go")] = BUNDLES_DIR,
) -> None:
    """Translate every rules/*.cql to ELM JSON (official CQL translator) and write the trial bundles."""
    from .build import compile_rules
    from .bundles import write_bundles
    from .engine.translator import TranslationError

    try:
        report = compile_rules(rules, elm)
    except TranslationError as exc:
        err.print("[red]CQL translation failed[/red]", markup=True)
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    err.print(f"ELM: {len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.removed)} removed")
    try:
        changed = write_bundles(bundles, rules, elm)
    except (ValueError, OSError) as exc:
        err.print("[red]bundle build failed[/red]", markup=True)
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from None
    err.print(f"bundles: {len(changed)} written in {bundles}")
    _print_value_sets(rules)


def _print_value_sets(rules: Path) -> None:
    """Value sets and codes per value set (issue 11's measure), from the definitions just built."""
    from .terminology.definitions import build_valuesets

    valuesets = build_valuesets(rules / "valuesets", os.environ.get("TRIAL_CDS_TERMINOLOGY_URL") or None)
    totals = [vs["expansion"]["total"] for vs in valuesets.values()]
    err.print(f"value sets: {len(valuesets)}, {sum(totals)} codes in all "
              f"(per value set: min {min(totals, default=0)}, median {sorted(totals)[len(totals) // 2] if totals else 0}, "
              f"max {max(totals, default=0)})")
    for vs in sorted(valuesets.values(), key=lambda v: v["id"]):
        systems: dict[str, int] = {}
        for c in vs["expansion"]["contains"]:
            key = c["system"].rstrip("/").rsplit("/", 1)[-1]
            systems[key] = systems.get(key, 0) + 1
        err.print(f"  {vs['id']:<58} {vs['expansion']['total']:>5}  "
                  + ", ".join(f"{k} {v}" for k, v in sorted(systems.items())), highlight=False)


def _read_bundle(path: Path) -> dict[str, Any]:
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
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        err.print(f"--at is not an ISO date-time: {at}")
        raise typer.Exit(2) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _load_catalogue(directory: Path) -> Catalogue:
    """The trial bundles in `directory`, problems reported; exit 1 when there is no trial."""
    from .catalogue import Catalogue

    cat = Catalogue.from_directory(directory)
    for problem in cat.problems:
        err.print(f"[yellow]catalogue: {problem}[/yellow]", markup=True)
    if not cat.trials:
        err.print(f"no trials found in {directory} (run `trial-cds build`)")
        raise typer.Exit(1)
    return cat


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="A patient's FHIR Bundle (JSON)")],
    at: Annotated[str | None, typer.Option(help="Evaluation date-time (ISO 8601); default now")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the machine-readable result (DESIGN contract)")] = False,
    catalogue: Annotated[Path, typer.Option(help="Directory of trial bundles")] = BUNDLES_DIR,
) -> None:
    """Evaluate one patient's Bundle against every trial and print the verdicts."""
    from .eligibility import evaluate_trials
    from .engine import Engine, EngineError

    doc = _read_bundle(bundle)
    when = _parse_at(at)
    cat = _load_catalogue(catalogue)
    with Engine(cat.libraries, pool_size=1) as engine:
        try:
            results = evaluate_trials(engine, cat, doc, when)
        except EngineError as exc:
            err.print(f"evaluation failed: {exc}")
            raise typer.Exit(1) from None
    if as_json:
        json.dump([r.model_dump(mode="json") for r in results], sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    from .report import print_results

    print_results(Console(), cat, results, when)


def _settings(**overrides: object) -> Settings:
    from .settings import Settings

    # Settings(...) (not model_validate): pydantic-settings reads TRIAL_CDS_* only in __init__.
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="DEV ONLY: accept hooks without a JWT")] = False,
) -> None:
    """Run the CDS Hooks service (settings from TRIAL_CDS_* variables; flags override)."""
    import uvicorn

    from .app import create_app
    from .web.server import uvicorn_config

    settings = _settings(host=host, port=port, insecure=True if insecure else None)
    if settings.insecure:
        err.print("[bold red]INSECURE MODE[/bold red]: hooks are accepted without a JWT. "
                  "For local demos only, never with real patient data.", markup=True)
    elif not settings.trusted_issuers:
        err.print("[yellow]no TRIAL_CDS_TRUSTED_ISSUERS configured: every hook call will be refused (401)[/yellow]", markup=True)
    uvicorn.Server(uvicorn_config(create_app(settings), settings.host, settings.port, log_level="info")).run()


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the demo service")] = 8080,
    once: Annotated[bool, typer.Option("--once", help="Print the cards and exit (for CI)")] = False,
) -> None:
    """Start the service locally (insecure), fire patient-view for three synthetic patients, show their cards."""
    from .demo import run_demo

    raise typer.Exit(run_demo(port=port, once=once))


@app.command()
def publish(
    fhir_base_url: Annotated[str, typer.Argument(help="FHIR R4 base URL, e.g. http://localhost:8090/fhir")],
    trial: Annotated[str | None, typer.Option(help="Publish only this trial (ResearchStudy id); default: the whole catalogue")] = None,
    patients: Annotated[bool, typer.Option("--patients", help="Also publish the synthetic patients (bundles/patients/*.json)")] = False,
    token: Annotated[str | None, typer.Option(envvar="TRIAL_CDS_PUBLISH_TOKEN", show_envvar=True,
                                              help="Bearer token for the FHIR server")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compare with the server and print what would change; write nothing")] = False,
    bundles: Annotated[Path, typer.Option(help="Directory of trial bundles")] = BUNDLES_DIR,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="List every resource and what happened to it")] = False,
) -> None:
    """Upload the trial catalogue (and optionally the synthetic patients) as transactions; idempotent."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from .publish import (
        CREATED,
        UNCHANGED,
        UPDATED,
        Publisher,
        PublishError,
        load_sources,
    )

    out = Console()
    try:
        sources = load_sources(bundles, trial=trial, patients=patients)
    except PublishError as exc:
        err.print("[red]cannot publish:[/red]", markup=True)
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None
    total = sum(len(s.resources) for s in sources)
    try:
        publisher = Publisher(fhir_base_url, token)
    except PublishError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        # Each resource is counted twice: once when compared with the server, once when written or skipped.
        task = bar.add_task("comparing with the server", total=2 * total)
        try:
            report = publisher.publish(sources, dry_run=dry_run,
                                       progress=lambda n, what: bar.update(task, advance=n, description=what))
        except PublishError as exc:
            bar.stop()
            err.print("[red]publish failed:[/red]", markup=True)
            err.print(str(exc), markup=False, highlight=False)
            raise typer.Exit(1) from None
    title = f"{'DRY RUN: would publish' if dry_run else 'Published'} to {fhir_base_url}"
    if report.failure is not None:
        title = f"Publish to {fhir_base_url} stopped at a failed transaction; written before it"
    table = Table(title=title)
    for col in ("resource type", CREATED, UPDATED, UNCHANGED):
        table.add_column(col, justify="left" if col == "resource type" else "right")
    counts = report.counts()
    for rtype in sorted(counts):
        c = counts[rtype]
        table.add_row(rtype, str(c[CREATED]), str(c[UPDATED]), str(c[UNCHANGED]))
    grand = {a: sum(c[a] for c in counts.values()) for a in (CREATED, UPDATED, UNCHANGED)}
    table.add_row("total", str(grand[CREATED]), str(grand[UPDATED]), str(grand[UNCHANGED]), style="bold")
    out.print(table)
    if verbose or dry_run:
        for key, action in report.actions.items():
            if verbose or action != UNCHANGED:
                out.print(f"  {'would be ' if dry_run else ''}{action}: {key}", markup=False, highlight=False)
    verb = "would send" if dry_run else "committed"
    if report.transactions == 0 and report.failure is None:
        out.print("nothing to write: the server already has every resource as published")
    out.print(f"{report.transactions} transaction(s) {verb}"
              + (f", {publisher.retries} retried request(s)" if publisher.retries else ""), markup=False, highlight=False)
    if report.failure is not None:
        f = report.failure
        err.print(f"[red]transaction {f.index} failed (HTTP {f.status}); the server rolled it back, "
                  f"nothing of it was written[/red]", markup=True)
        for e in f.errors:
            err.print(f"  {e.key or 'transaction'}: {e.message}", markup=False, highlight=False)
        err.print(f"not written: {len(report.not_written)} resource(s) "
                  f"({len(f.keys)} in the failed transaction, the rest not sent); "
                  f"{report.transactions} earlier transaction(s) were committed", markup=False, highlight=False)
        raise typer.Exit(1)


@app.command()
def screen(
    source: Annotated[str, typer.Argument(help="Bulk FHIR export: a folder of .ndjson files (one resource type per "
                                               "file), a file, a glob, or any path Spark reads (hdfs:, s3a:, ...)")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (results.parquet, worklist.csv, report.html, ...)")],
    at: Annotated[str | None, typer.Option(help="Evaluation date-time (ISO 8601); default now")] = None,
    trial: Annotated[list[str] | None, typer.Option("--trial", help="Screen for this trial only (ResearchStudy id; "
                                                                     "repeat for several); default every trial")] = None,
    master: Annotated[str | None, typer.Option(envvar="SPARK_MASTER", show_envvar=True,
                                               help="Spark master URL; default local[*] (this machine's cores)")] = None,
    catalogue: Annotated[Path, typer.Option(help="Directory of trial bundles")] = BUNDLES_DIR,
    partitions: Annotated[int | None, typer.Option(min=1, help="Patient partitions (default: from the input size)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress display")] = False,
) -> None:
    """Screen every patient of a Bulk FHIR export against every trial (Apache Spark); write the results."""

    try:
        from .screen import ScreenError, run_screen, spark_session
        from .screen.progress import ProgressView
    except ImportError as exc:
        err.print(f"trial-cds screen needs PySpark: pip install -e '.[screen]' ({exc})")
        raise typer.Exit(2) from None
    when = _parse_at(at)
    cat = _load_catalogue(catalogue)
    try:
        from .screen.job import choose_trials

        chosen = choose_trials(cat, trial)
    except ScreenError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from None
    view = None if quiet else ProgressView(err, {t.id: t.title for t in cat.trials if t.id in chosen})
    spark = spark_session(master)
    try:
        result = run_screen(spark, source, out, cat, when, trials=chosen, partitions=partitions,
                            progress=view.update if view else None)
    except ScreenError as exc:
        from .screen import ScreenFailed

        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1 if isinstance(exc, ScreenFailed) else 2) from None
    finally:
        if view:
            view.close()
        spark.stop()
    s = result.summary
    err.print(f"{s['patients']['screened']:,} patients screened ({s['patients']['inPopulation']:,} in the catalogue's "
              f"population, {s['patients']['notScreened']:,} not screened) in {result.run['seconds']['total']:.1f} s",
              markup=False, highlight=False)
    for t in s["trials"]:
        v = s["verdicts"][t["id"]]
        err.print(f"  {t['id']}: {v['likely-eligible']:,} likely, {v['possibly-eligible']:,} possibly eligible",
                  markup=False, highlight=False)
    problems = sum(sum(d.values()) for d in s["lineProblems"].values())
    if problems:
        err.print(f"  {problems:,} line(s) could not be attributed to a patient (see the report)", markup=False,
                  highlight=False)
    err.print(f"written to {out}: results.parquet, worklist.csv, not-screened.csv, summary.json, report.html",
              markup=False, highlight=False)


@app.command("feedback")
def feedback_summary(
    db: Annotated[Path | None, typer.Option(help="Feedback/audit SQLite file (default TRIAL_CDS_DB)")] = None,
) -> None:
    """Summarise card feedback per trial: shown, accepted, overridden and why."""
    from rich.table import Table

    from .store import Store

    settings = _settings(db=db)
    if not settings.db.exists():
        err.print(f"no feedback database at {settings.db}")
        raise typer.Exit(1)
    store = Store(settings.db)
    table = Table(title=f"Card feedback ({settings.db})")
    for col in ("trial", "shown", "accepted", "overridden", "override reasons"):
        table.add_column(col)
    for s in store.summary():
        reasons = ", ".join(f"{k} ({v})" for k, v in sorted(s.reasons.items(), key=lambda kv: -kv[1]))
        table.add_row(s.trial, str(s.shown), str(s.accepted), str(s.overridden), reasons or "-")
    store.close()
    Console().print(table)


if __name__ == "__main__":  # pragma: no cover
    app()
