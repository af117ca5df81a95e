"""The clinician view's time to first checklist after launch, per committed synthetic patient.

Starts what the browser tests start (tests/browser/conftest.py: the test FHIR server with SMART on
and every committed patient published, the service, one headless Chromium), then for every
patient: the service's card (a real hook) -> click on its smart link -> launch -> authorize ->
token -> FHIR reads with the app's token -> evaluation -> rendered checklist. Printed per patient:
the time from the click to the rendered checklist (ms, as the EHR user waits for it), and the
app's own figure (ms from its page's navigation start to the checklist in the DOM); then
median and max over the patients. Runs each patient `--rounds` times (the first round is cold).

    .venv/bin/python bench/app.py
    .venv/bin/python bench/app.py --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import contextlib

from tests.browser.conftest import PATIENTS, stack


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import tempfile

    class _Tmp:  # what the fixture asks of pytest's tmp_path_factory
        def mktemp(self, name: str) -> Path:
            return Path(tempfile.mkdtemp(prefix=f"trial-cds-{name}-"))

    gen = stack.__wrapped__(_Tmp())  # the session fixture's generator, outside pytest
    s = next(gen)
    rows = []
    try:
        for name in PATIENTS:
            launches, app_ms, marks = [], [], []
            for _ in range(args.rounds):
                state = s.ehr_launch(name, shot=f"bench-{name}")
                if state["state"] != "ready":
                    raise SystemExit(f"{name}: {state.get('message')}")
                launches.append(state["launchToChecklistMs"])
                app_ms.append(state["firstChecklistMs"])
                marks.append(state.get("marks") or {})
            rows.append({"patient": name, "click_to_checklist_ms": launches, "app_first_checklist_ms": app_ms, "marks": marks,
                         "cards": len([c for c in state["cards"] if c.get("extension")])})
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)
    print(f"clinician view, time to first checklist after launch ({args.rounds} rounds; first is cold)")
    head = f"{'patient':36} {'cards':>5} {'click->checklist ms':>22} {'app nav->checklist ms':>22}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['patient']:36} {r['cards']:>5} {'/'.join(str(round(x)) for x in r['click_to_checklist_ms']):>22} "
              f"{'/'.join(str(round(x)) for x in r['app_first_checklist_ms']):>22}")
    warm = [r["click_to_checklist_ms"][-1] for r in rows]
    cold = [r["click_to_checklist_ms"][0] for r in rows]
    print("-" * len(head))
    def phase(a: str, b: str) -> float:
        return statistics.median(r["marks"][-1][b] - r["marks"][-1][a] for r in rows)

    print(f"where the app's time goes (warm medians): page load + token {statistics.median(r['marks'][-1]['token'] for r in rows):.0f} ms, "
          f"FHIR reads {phase('token', 'read'):.0f} ms, evaluation {phase('read', 'evaluated'):.0f} ms, "
          f"rendering {phase('evaluated', 'rendered'):.0f} ms")
    print(f"click -> checklist: warm median {statistics.median(warm):.0f} ms, max {max(warm):.0f} ms; "
          f"first launch of the session {cold[0]:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
