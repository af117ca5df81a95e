"""The screening report: one self-contained HTML page (inline CSS and SVG, no script, no CDN).

Drawn from `summary.json` alone, so it can be re-rendered and a rerun gives the same bytes.
For a trial's research coordinator: how many patients per trial may qualify, which criteria
exclude most often (and how many patients one criterion alone keeps out: the near misses),
which missing tests leave most patients undecided, and what in the export could not be used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

COLOURS = {"likely-eligible": "#2e7d32", "possibly-eligible": "#f9a825", "excluded": "#9e9e9e",
           "outside-population": "#e0e0e0"}
LABELS = {"likely-eligible": "likely eligible", "possibly-eligible": "possibly eligible",
          "excluded": "excluded by a criterion", "outside-population": "outside the catalogue's population"}
PROBLEM_TEXT = {
    "malformed": "lines that are not a JSON object",
    "no-resource-type": "JSON without a resourceType",
    "unknown-resource-type": "resource types FHIR R4 does not have",
    "malformed-resource": "resources whose subject/patient/id has the wrong JSON shape",
    "invalid-patient-id": "Patient resources without a valid id",
    "no-patient-reference": "resources without a usable patient reference (not Patient/<id>)",
    "conflicting-patient-references": "resources whose subject and patient name different patients",
    "no-patient-resource": "patients referenced by resources but absent from the Patient file",
    "conflicting-versions": "patients with two different versions of one resource",
    "unreadable-resource": "patients with a line that could not be read",
    "evaluation-failed": "patients whose evaluation failed (engine error or timeout)",
    "duplicate-lines": "identical duplicate lines (kept once)",
}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#212121;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{margin-bottom:.3rem}.meta{color:#616161}.note{background:#fff8e1;border-left:4px solid #f9a825;padding:.6rem 1rem}
table{border-collapse:collapse;margin:.6rem 0}
td,th{padding:.25rem .6rem;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.key span{display:inline-block;width:.9rem;height:.9rem;margin:0 .3rem 0 1rem;vertical-align:-2px}
svg text{font:12px system-ui,sans-serif;fill:#212121}code{font-size:.92em}
"""


def _n(value: Any) -> str:
    return f"{int(value):,}"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _svg_open(width: int, height: int) -> str:
    return (f'<svg role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            'xmlns="http://www.w3.org/2000/svg">')


def bar_chart(items: Sequence[tuple[str, int]], colour: str = "#1565c0", width: int = 760,
              label_width: int = 300) -> str:
    """Horizontal bars, one per (label, value); an inline SVG."""
    if not items:
        return ""
    top = max(v for _, v in items) or 1
    row = 22
    height = row * len(items) + 4
    span = width - label_width - 70
    parts = [_svg_open(width, height)]
    for i, (label, value) in enumerate(items):
        y = i * row + 2
        w = max(1, round(span * value / top)) if value else 0
        parts.append(f'<text x="{label_width - 8}" y="{y + 15}" text-anchor="end">{escape(_short(label, 44))}</text>'
                     f'<rect x="{label_width}" y="{y + 3}" width="{w}" height="{row - 6}" fill="{colour}">'
                     f'<title>{escape(label)}: {value:,}</title></rect>'
                     f'<text x="{label_width + w + 6}" y="{y + 15}">{value:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(rows: Sequence[tuple[str, Mapping[str, int]]], keys: Sequence[str], width: int = 760,
                  label_width: int = 220) -> str:
    """One stacked bar per row (shares of the row's total), coloured by key; an inline SVG."""
    if not rows:
        return ""
    row = 26
    height = row * len(rows) + 4
    span = width - label_width - 10
    parts = [_svg_open(width, height)]
    for i, (label, counts) in enumerate(rows):
        y = i * row + 2
        total = sum(counts.get(k, 0) for k in keys)
        parts.append(f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end">{escape(_short(label, 30))}</text>')
        x = float(label_width)
        for k in keys:
            value = counts.get(k, 0)
            if not value or not total:
                continue
            w = span * value / total
            parts.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{COLOURS[k]}">'
                         f'<title>{escape(label)}: {escape(LABELS[k])} {value:,}</title></rect>')
            x += w
    parts.append("</svg>")
    return "".join(parts)


def _criterion_text(trial: Mapping[str, Any], cid: str) -> str:
    c = trial["criteria"].get(cid)
    return f"{cid} {_short(c['text'], 120)}" if c else cid


def render(summary: Mapping[str, Any]) -> str:
    trials = summary["trials"]
    patients = summary["patients"]
    verdicts = summary["verdicts"]
    out: list[str] = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      "<title>Trial screening report</title>", f"<style>{CSS}</style></head><body>"]
    out.append("<h1>Which patients may join which trial</h1>")
    out.append(f'<p class="meta">Evaluated as of <b>{escape(summary["at"])}</b> · input '
               f'<code>{escape(summary["input"]["source"])}</code> ({_n(summary["input"]["files"])} files) · '
               f'population gate <code>{escape(str(summary["populationLibrary"]))}</code></p>')
    screened, in_pop = patients["screened"], patients["inPopulation"]
    out.append("<table><tr><th>patients screened</th><th>in the catalogue's population</th>"
               "<th>not screened (see below)</th><th>resources evaluated</th></tr>"
               f'<tr><td class="n">{_n(screened)}</td><td class="n">{_n(in_pop)} ({_pct(in_pop, screened)})</td>'
               f'<td class="n">{_n(patients["notScreened"])}</td>'
               f'<td class="n">{_n(patients["resources"])}</td></tr></table>')
    out.append('<p class="note">A screening aid, not an eligibility decision. "Likely eligible" means every '
               "criterion the data can decide is shown by the record; \"possibly eligible\" means nothing in the "
               "record excludes the patient but some criteria are undecided (missing, stale or unclassifiable data), "
               "listed with the tests to order. Criteria needing a clinician (consent, contraception, investigator "
               "judgement) are always to be confirmed. Patients outside the catalogue's population (no SLE diagnosis "
               "the rules recognise) are not evaluated against the trials.</p>")

    # Verdicts.
    keys = ["likely-eligible", "possibly-eligible", "excluded", "outside-population"]
    out.append("<h2>Patients per trial and verdict</h2><table><tr><th>trial</th>"
               + "".join(f"<th>{escape(LABELS[k])}</th>" for k in keys) + "</tr>")
    for t in trials:
        v = verdicts[t["id"]]
        name = escape(t["title"]) + (f' <span class="meta">({escape(t["nct"])})</span>' if t.get("nct") else "")
        out.append(f"<tr><td>{name}<br><code>{escape(t['id'])}</code></td>"
                   + "".join(f'<td class="n">{_n(v[k])}</td>' for k in keys) + "</tr>")
    out.append("</table>")
    if patients.get("deceasedCandidates"):
        out.append(f"<p>{_n(patients['deceasedCandidates'])} patient(s) likely or possibly eligible for a trial are "
                   "recorded as deceased: counted above, left off <code>worklist.csv</code>.</p>")
    out.append('<p class="key">In the population:' + "".join(
        f'<span style="background:{COLOURS[k]}"></span>{escape(LABELS[k])}' for k in keys[:3]) + "</p>")
    out.append(stacked_chart([(t["id"], verdicts[t["id"]]) for t in trials], keys[:3]))

    # Exclusions.
    out.append("<h2>Criteria that exclude most often</h2><p>Patients of the population excluded by each criterion "
               "(a patient may be excluded by several); <i>only reason</i> counts those excluded by that criterion "
               "alone: the near misses.</p>")
    for t in trials:
        rows = summary["exclusions"][t["id"]][:10]
        out.append(f"<h3>{escape(t['title'])}</h3>")
        if not rows:
            out.append("<p>No patient of the population is excluded.</p>")
            continue
        out.append("<table><tr><th>criterion</th><th>patients</th><th>only reason</th></tr>" + "".join(
            f"<tr><td>{escape(_criterion_text(t, r['criterion']))}</td><td class=\"n\">{_n(r['patients'])}</td>"
            f"<td class=\"n\">{_n(r['only'])}</td></tr>" for r in rows) + "</table>")
        out.append(bar_chart([(r["criterion"], r["patients"]) for r in rows], colour="#757575"))

    # Missing tests.
    out.append("<h2>Tests whose absence leaves most patients undecided</h2><p>Distinct possibly-eligible patients "
               "for whom the test is missing or out of date, over all trials; ordering it would decide at least one "
               "criterion.</p>")
    missing = summary["missingTests"][:15]
    if missing:
        out.append("<table><tr><th>test</th><th>code</th><th>patients</th><th>trials</th></tr>" + "".join(
            f"<tr><td>{escape(m['display'] or m['code'])}</td><td><code>{escape(m['code'])}</code> "
            f"<span class=\"meta\">{escape(m['system'] or '')}</span></td><td class=\"n\">{_n(m['patients'])}</td>"
            f"<td class=\"n\">{_n(m['trials'])}</td></tr>" for m in missing) + "</table>")
        out.append(bar_chart([(m["display"] or m["code"], m["patients"]) for m in missing], colour="#f9a825"))
    else:
        out.append("<p>No possibly-eligible patient is missing a test.</p>")
    for t in trials:
        undecided = summary["undecided"][t["id"]][:8]
        if not undecided:
            continue
        out.append(f"<h3>{escape(t['title'])}: criteria left undecided</h3><table><tr><th>criterion</th>"
                   "<th>possibly-eligible patients</th></tr>" + "".join(
                       f"<tr><td>{escape(_criterion_text(t, u['criterion']))}</td>"
                       f"<td class=\"n\">{_n(u['patients'])}</td></tr>"
                       for u in undecided) + "</table>")

    # Data quality.
    out.append("<h2>What in the export could not be used</h2>")
    lines = summary["lineProblems"]
    if lines:
        out.append("<table><tr><th>lines</th><th>detail</th><th>count</th></tr>")
        for kind, details in lines.items():
            for detail, count in details.items():
                out.append(f"<tr><td>{escape(PROBLEM_TEXT.get(kind, kind))}</td><td><code>{escape(detail)}</code></td>"
                           f'<td class="n">{_n(count)}</td></tr>')
        out.append("</table><p>Lines that cannot be attributed to a patient are never guessed into a record; the "
                   "patients they belonged to were screened without them.</p>")
    else:
        out.append("<p>Every line was read and attributed to a patient.</p>")
    if summary["patientProblems"]:
        out.append("<table><tr><th>patients</th><th>count</th></tr>" + "".join(
            f"<tr><td>{escape(PROBLEM_TEXT.get(k, k))}</td>"
            f"<td class=\"n\">{_n(v['count'] if k == 'duplicate-lines' else v['patients'])}</td></tr>"
            for k, v in summary["patientProblems"].items()) + "</table><p>Patients not screened are listed in "
            "<code>not-screened.csv</code>.</p>")
    codes = summary.get("codesNoRuleReads") or {}
    if codes.get("resources"):
        out.append("<h3>Codes no rule reads</h3><p>Resources coded only in code systems the catalogue's rules do not "
                   "name (or not coded at all): no criterion can use them, so they count as missing data. <b>"
                   f"{_n(codes['patientsOutsidePopulation'])}</b> patients outside the catalogue's population hold at "
                   "least one. Map such codes to a standard system or extend the value sets.</p>")
        out.append("<table><tr><th>resource type and code systems</th><th>resources</th></tr>" + "".join(
            f'<tr><td><code>{escape(k)}</code></td><td class="n">{_n(v)}</td></tr>'
            for k, v in list(codes["resources"].items())[:12]) + "</table>")
    if summary["notReadByRules"]:
        out.append("<p>Resource types the rules never read (skipped): " + ", ".join(
            f"{escape(k)} {_n(v)}" for k, v in summary["notReadByRules"].items()) + ".</p>")
    out.append("</body></html>\n")
    return "\n".join(out)
