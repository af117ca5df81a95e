"""`trial-cds demo`: the service on localhost, three real hook calls, their cards on screen."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

DEMO_PATIENTS = [
    ("adult-likely", "likely eligible: complete, recent data"),
    ("adult-missing-serology", "possibly eligible: no hepatitis/HIV serology on record"),
    ("no-sle", "no SLE diagnosis: no cards"),
]


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _evidence(c: dict[str, Any]) -> str:
    return "; ".join(
        (" ".join(str(x) for x in (e.get("value"), e.get("unit")) if x not in (None, ""))
         + (f" ({e['date'][:10]})" if e.get("date") else "") + (f" {e['note']}" if e.get("note") else "")).strip()
        for e in c["evidence"]
    )


def print_cards(console: Console, title: str, response: dict[str, Any]) -> None:
    """Each card: its summary, how its criteria stand, and what is still undecided."""
    cards = response.get("cards", [])
    console.rule(f"[bold]{title}[/bold]: {len(cards)} card(s)")
    if not cards:
        console.print("  no cards (the service shows nothing for this patient)")
    for card in cards:
        ext = card["extension"]["trial-cds"]
        decided = [c for c in ext["criteria"] if c["type"] != "review"]
        counts = {s: sum(c["status"] == s for c in decided) for s in ("met", "not-met", "unknown")}
        review = sum(c["type"] == "review" for c in ext["criteria"])
        body = Table.grid(padding=(0, 1))
        body.add_row(Text(f"{len(decided)} criteria decided from data: {counts['met']} met, "
                          f"{counts['not-met']} not met (as required for exclusions), {counts['unknown']} unknown; "
                          f"{review} to confirm with the patient or investigator"))
        open_items = [c for c in decided if c["status"] == "unknown"]
        if open_items:
            table = Table(show_header=True, expand=True, box=None, title="undecided", title_justify="left")
            table.add_column("criterion", no_wrap=True)
            table.add_column("type")
            table.add_column("why", ratio=3)
            for c in open_items:
                table.add_row(c["id"], c["type"], Text(_evidence(c) or "no data", style="yellow"))
            body.add_row(table)
        orders = [s["label"] for s in card.get("suggestions", [])]
        body.add_row(Text("suggestions: " + "; ".join(orders), style="cyan"))
        for link in card.get("links", []):
            body.add_row(Text(f"{link['label']}: {link['url']}", style="blue"))
        console.print(Panel(body, title=card["summary"], title_align="left",
                            border_style="green" if ext["verdict"] == "likely-eligible" else "yellow"))


def run_demo(*, port: int = 8080, once: bool = False) -> int:
    import uvicorn

    from .app import create_app
    from .settings import Settings
    from .web.server import uvicorn_config

    console = Console()
    if not _free(port):
        new = _any_port()
        console.print(f"port {port} is busy; using {new}")
        port = new
    settings = Settings(insecure=True, host="127.0.0.1", port=port)
    console.print("[bold red]INSECURE MODE[/bold red] (demo): hooks are accepted without a JWT.")
    server = uvicorn.Server(uvicorn_config(create_app(settings), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            console.print("[red]the service did not start[/red]")
            return 1
        time.sleep(0.05)
    try:
        ready = requests.get(f"{base}/readyz", timeout=10).json()
        console.print(f"service ready at {base}: {ready['trials']} trials, {ready['workers']} CQL workers")
        discovery = requests.get(f"{base}/cds-services", timeout=10).json()
        service = discovery["services"][0]
        console.print(f"discovery: service [bold]{service['id']}[/bold] on {service['hook']}, "
                      f"{len(service.get('prefetch', {}))} prefetch templates")
        # The demo patients are generated as of now (their labs are days old, whatever the date),
        # and their prefetch answers the templates discovery just advertised, as an EHR would.
        from datetime import datetime

        from .hooks.prefetch import PrefetchQuery
        from .synthetic.patients import generate, hook_request

        queries = [PrefetchQuery(key, template.split("/")[0].split("?")[0], template)
                   for key, template in service.get("prefetch", {}).items()]
        patients = generate(datetime.now(UTC), [name for name, _ in DEMO_PATIENTS])
        out_dir = Path(tempfile.gettempdir()) / "trial-cds-demo"
        out_dir.mkdir(exist_ok=True)
        failed = False
        for name, what in DEMO_PATIENTS:
            body = hook_request(name, patients[name], queries)
            (out_dir / f"{name}.json").write_text(json.dumps(body, indent=2), encoding="utf-8")
            started = time.perf_counter()
            reply = requests.post(f"{base}/cds-services/{service['id']}", json=body, timeout=60)
            ms = (time.perf_counter() - started) * 1000
            if reply.status_code != 200:
                console.print(f"[red]{name}: HTTP {reply.status_code} {reply.text[:300]}[/red]")
                failed = True
                continue
            print_cards(console, f"{name} ({what}) in {ms:.0f} ms", reply.json())
        sample = out_dir / f"{DEMO_PATIENTS[0][0]}.json"
        console.rule("try it")
        console.print(f"curl -s -X POST {base}/cds-services/{service['id']} -H 'Content-Type: application/json' "
                      f"-d @{sample}", soft_wrap=True, highlight=False)
        console.print(f"OpenAPI docs: {base}/docs")
        if failed:
            return 1
        if once:
            return 0
        console.print("serving until Ctrl-C")
        while thread.is_alive():
            thread.join(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.should_exit = True
        thread.join(15)
