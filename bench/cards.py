"""What a clinician is shown: card size per committed synthetic patient, and how tall it renders.

For every patient in fhir_bundles/patients/ (its ready-made hook request in hooks/), the record is
assembled from the prefetch as the service does it, every trial evaluated as of the patients'
evaluation date (2026-11-26T09:00:00Z), and the cards built by cds.cards. Printed per patient:
the number of cards; the detail markdown per card (bytes and lines: mean and max); the height
of the cards rendered in headless Chromium (tests/browser/driver.mjs: a 640 px card column, detail
through markdown-it, CommonMark + GFM tables, as a CDS client renders it): per card max and the
whole list. The clinician view's time to first checklist is measured by bench/app.py.

    .venv/bin/python bench/cards.py                 # table
    .venv/bin/python bench/cards.py --json out.json # also the raw figures
    .venv/bin/python bench/cards.py --no-browser    # sizes only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from cds.cards import build_cards
from cds.eligibility import evaluate_trials
from cds.paths import PATIENTS_DIR
from cds.record import assemble_record
from cds.ruleset import build_ruleset as build_rules
from cds.settings import Settings

EVAL_AT = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
APP_URL = "http://127.0.0.1:8080/app/launch.html"  # the smart link, as the service would set it


def patient_cards(name: str, rules: Any) -> list[dict[str, Any]]:
    hook = json.loads((PATIENTS_DIR / "hooks" / f"{name}.json").read_text(encoding="utf-8"))
    pid = hook["context"]["patientId"]
    record = assemble_record(pid, rules.queries, hook["prefetch"], None)
    results = evaluate_trials(rules.engine, rules.catalogue, record.bundle, EVAL_AT)
    cards = build_cards(rules.catalogue.trials, results, pid, hook["hookInstance"], rules.orderable,
                        record=record.bundle, app_url=APP_URL)
    return [c.model_dump(mode="json", exclude_none=True) for c in cards]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    ap.add_argument("--no-browser", action="store_true", help="sizes only (no Chromium)")
    ap.add_argument("--screenshots", type=Path, help="save each patient's rendered cards here")
    args = ap.parse_args()

    names = sorted(p.stem for p in PATIENTS_DIR.glob("*.json") if not p.stem.startswith("random-"))
    rules = build_rules(Settings(insecure=True))
    rules.engine.start()
    browser = None
    if not args.no_browser:
        from tests.browser.driver import Browser

        browser = Browser().start()
    rows = []
    try:
        for name in names:
            cards = patient_cards(name, rules)
            details = [c.get("detail", "") for c in cards]
            row: dict[str, Any] = {
                "patient": name, "cards": len(cards),
                "bytes": [len(d.encode("utf-8")) for d in details],
                "lines": [len(d.splitlines()) for d in details],
                "summary_chars": [len(c["summary"]) for c in cards],
                "suggestions": [len(c.get("suggestions", [])) for c in cards],
            }
            if browser is not None and cards:
                shot = str(args.screenshots / f"{name}.png") if args.screenshots else None
                r = browser.call("render_cards", cards=cards, screenshot=shot)
                row["heights"], row["total_height"] = r["heights"], r["total"]
            rows.append(row)
    finally:
        if browser is not None:
            browser.stop()
        rules.engine.close()

    def mean(xs: list[int]) -> str:
        return f"{statistics.mean(xs):.0f}" if xs else "-"

    print(f"cards as of {EVAL_AT.isoformat()}, {len(names)} committed patients")
    head = f"{'patient':36} {'cards':>5} {'bytes mean/max':>15} {'lines mean/max':>15} {'sugg max':>8} {'px card max':>11} {'px all':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['patient']:36} {r['cards']:>5} {mean(r['bytes']) + '/' + str(max(r['bytes'], default='-')):>15} "
              f"{mean(r['lines']) + '/' + str(max(r['lines'], default='-')):>15} {max(r['suggestions'], default=0):>8} "
              f"{max(r.get('heights', []), default='-')!s:>11} {r.get('total_height', '-')!s:>7}")
    every = [b for r in rows for b in r["bytes"]]
    lines = [n for r in rows for n in r["lines"]]
    heights = [h for r in rows for h in r.get("heights", [])]
    print("-" * len(head))
    print(f"all cards: {len(every)}; detail bytes mean {mean(every)} max {max(every, default=0)}; "
          f"lines mean {mean(lines)} max {max(lines, default=0)}"
          + (f"; rendered height per card mean {mean(heights)} px max {max(heights)} px" if heights else "")
          + (f"; tallest patient list {max(r.get('total_height', 0) for r in rows)} px" if heights else ""))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
