"""Cards a clinician reads in five seconds (issue 13), for every committed synthetic patient.

Each patient's hook request (fhir_bundles/patients/hooks/) goes through the service's own steps
(record from the prefetch, every trial's CQL, cards) as of the patients' evaluation date. The
cards must meet the size limits, speak clinical words (no engine wording, UCUM annotations or
code URLs), carry one referral and at most one "order the missing tests" suggestion holding every
proposed ServiceRequest, link to the registry and to the clinician view, and keep the DESIGN
extension exactly as the evaluation gave it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from cds.cards import OVERRIDE_REASONS, build_cards, card_uuid, read_result, summary
from cds.catalogue import CriterionDef, TrialDef
from cds.eligibility import (
    Coding,
    CriterionResult,
    Evidence,
    TrialResult,
    evaluate_trials,
)
from cds.markdown import shorten
from cds.paths import PATIENTS_DIR
from cds.record import assemble_record
from cds.ruleset import build_ruleset as build_rules
from cds.settings import Settings
from tests.conftest import EVAL_AT

APP_URL = "https://cds.example/app/launch.html"
PATIENTS = sorted(p.stem for p in PATIENTS_DIR.glob("*.json") if not p.stem.startswith("random-"))
ENGINE_WORDING = re.compile(r": (met|not-met|unknown)\b|not-met|\{score\}|\{1\.73_m2\}|10\*9|10\*3|\[IU\]|"
                            r"https?://|\|\s*\d{3,}-\d|compared [<>]|rule '", re.IGNORECASE)
CRITERION_ID = re.compile(r"\b\d{3}-[IE]\d+\b")


@pytest.fixture(scope="module")
def rules() -> Iterator[Any]:
    r = build_rules(Settings(insecure=True, pool_size=1))
    r.engine.start()
    try:
        yield r
    finally:
        r.engine.close()


@pytest.fixture(scope="module")
def cards_by_patient(rules: Any) -> dict[str, tuple[list[dict[str, Any]], list[TrialResult], dict[str, Any]]]:
    out = {}
    for name in PATIENTS:
        hook = json.loads((PATIENTS_DIR / "hooks" / f"{name}.json").read_text(encoding="utf-8"))
        pid = hook["context"]["patientId"]
        record = assemble_record(pid, rules.queries, hook["prefetch"], None)
        results = evaluate_trials(rules.engine, rules.catalogue, record.bundle, EVAL_AT)
        cards = build_cards(rules.catalogue.trials, results, pid, hook["hookInstance"], rules.orderable,
                            record=record.bundle, app_url=APP_URL)
        out[name] = ([c.model_dump(mode="json", exclude_none=True) for c in cards], results, hook)
    return out


def test_every_committed_patient_is_covered(cards_by_patient: dict[str, Any]) -> None:
    assert len(PATIENTS) >= 20
    assert sum(len(v[0]) for v in cards_by_patient.values()) >= 30, "most patients get cards"


@pytest.mark.parametrize("name", PATIENTS)
def test_cards_meet_the_size_limits(cards_by_patient: dict[str, Any], name: str) -> None:
    cards, results, _ = cards_by_patient[name]
    assert len(cards) == sum(r.verdict != "excluded" for r in results)
    for card in cards:
        assert len(card["summary"]) < 140, card["summary"]
        lines = card["detail"].splitlines()
        assert len(lines) <= 12, card["detail"]
        assert len(card["detail"].encode("utf-8")) <= 1500, card["detail"]
        assert all(len(line) <= 320 for line in lines), card["detail"]
        assert len(card["suggestions"]) <= 2


@pytest.mark.parametrize("name", PATIENTS)
def test_cards_speak_clinical_words(cards_by_patient: dict[str, Any], name: str) -> None:
    for card in cards_by_patient[name][0]:
        for text in (card["summary"], card["detail"], *[s["label"] for s in card["suggestions"]]):
            assert not ENGINE_WORDING.search(text), text
            assert not CRITERION_ID.search(text), f"no internal criterion ids on the card: {text}"
        ext = card["extension"]["trial-cds"]
        assert ext["researchStudy"] not in card["summary"], "the internal ResearchStudy.id is not a name"
        verdict = {"likely-eligible": "Likely eligible", "possibly-eligible": "Possibly eligible"}[ext["verdict"]]
        assert card["summary"].startswith(verdict + ": ")
        if ext["researchStudy"].startswith("nct"):
            assert f"({ext['researchStudy'].upper()})" in card["summary"], "registry id in the summary"


@pytest.mark.parametrize("name", PATIENTS)
def test_suggestions_links_and_extension(cards_by_patient: dict[str, Any], name: str, rules: Any) -> None:
    cards, results, hook = cards_by_patient[name]
    by_trial = {r.researchStudy: r for r in results}
    pid = hook["context"]["patientId"]
    for card in cards:
        ext = card["extension"]["trial-cds"]
        result = by_trial[ext["researchStudy"]]
        assert ext == result.model_dump(mode="json"), "the DESIGN extension is the evaluation, unchanged"
        referral, *orders = card["suggestions"]
        assert referral["label"].startswith("Refer for trial screening")
        assert [a["resource"]["resourceType"] for a in referral["actions"]] == ["ServiceRequest"]
        missing = {(m.system, m.code) for c in result.criteria if c.status == "unknown" and c.type != "review"
                   for m in c.missing if (m.system or "", m.code) in rules.orderable}
        if missing:
            [order] = orders
            codes = {(a["resource"]["code"]["coding"][0]["system"], a["resource"]["code"]["coding"][0]["code"])
                     for a in order["actions"]}
            assert codes == missing, "one suggestion carries every missing test as a ServiceRequest"
            for a in order["actions"]:
                sr = a["resource"]
                assert (sr["status"], sr["intent"], sr["subject"]["reference"]) == ("draft", "proposal", f"Patient/{pid}")
        else:
            assert orders == []
        links = {link["type"]: link for link in card["links"]}
        smart = links["smart"]
        assert smart["url"] == APP_URL and smart["appContext"] == card["uuid"], "appContext: an opaque id only"
        assert pid not in json.dumps(smart)
        if ext["researchStudy"].startswith("nct"):
            assert links["absolute"]["url"].startswith("https://clinicaltrials.gov/")
        assert card["overrideReasons"] == [r.model_dump(exclude_none=True) for r in OVERRIDE_REASONS]


def test_missing_and_stale_tests_are_named(cards_by_patient: dict[str, Any]) -> None:
    cards = {c["extension"]["trial-cds"]["researchStudy"]: c for c in cards_by_patient["adult-missing-serology"][0]}
    detail = cards["nct07318259"]["detail"]
    for name in ("HBsAg", "anti\\-HBc", "HCV antibody", "HIV\\-1/2 Ag/Ab", "syphilis antibody"):
        assert name in detail, detail
    assert "test" in cards["nct07318259"]["summary"] and "missing" in cards["nct07318259"]["summary"]
    stale = {c["extension"]["trial-cds"]["researchStudy"]: c for c in cards_by_patient["stale-labs"][0]}
    detail = stale["nct07318259"]["detail"]
    assert "Out of date" in detail and "28 May 2026" in detail
    assert "eGFR 117 mL/min/1\\.73 m²" in detail, "units as clinicians write them"
    four = stale["nct06350110"]["detail"]
    assert "10⁹/L" in four and "10\\*9" not in four


def test_units_dates_and_names_read_as_clinicians_write_them() -> None:
    from cds.display import day, quantity, test_name, unit

    assert unit("10*9/L") == "10⁹/L" and quantity(2.4, "10*9/L") == "2.4 × 10⁹/L"
    assert quantity(210, "/uL") == "210/µL" and unit("umol/L") == "µmol/L"
    assert unit("mL/min/{1.73_m2}") == "mL/min/1.73 m²" and quantity(12, "{score}") == "12"
    assert unit("[IU]/mL") == "IU/mL" and unit("{titer}") == ""
    assert day("2026-11-12T09:00:00+00:00") == "12 Nov 2026" and day("2026-05-28") == "28 May 2026"
    loinc = "http://loinc.org"
    assert test_name(loinc, "98979-8", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, "
                                       "Plasma or Blood by Creatinine-based formula (CKD-EPI 2021)") == "eGFR"
    assert test_name(loinc, "2118-8", "Choriogonadotropin (pregnancy test) [Presence] in Serum or Plasma") == "serum hCG"
    assert test_name(loinc, "1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma") == "ALT"
    assert test_name(loinc, "99999-9", "Some new analyte [Mass/volume] in Serum or Plasma") == "Some new analyte"
    assert test_name("https://trial-cds.dev/codes", "sledai-2k") == "SLEDAI-2K"


def _trial(criteria: list[CriterionDef], nct: str | None = "NCT00000001", title: str = "A trial") -> TrialDef:
    return TrialDef(id=(nct or "local-trial").lower(), title=title, library="L", criteria=tuple(criteria),
                    page="https://clinicaltrials.gov/study/NCT00000001" if nct else None, nct=nct,
                    short_title=title)


def test_review_parts_from_the_rules_are_items_to_confirm() -> None:
    """Issue 11's shape: parts of a criterion needing judgement are `review` entries `<id>.<part>`."""
    crit = [CriterionDef("001-I4", "inclusion", "I4", "Organ function adequate", False),
            CriterionDef("001-I4.ecg", "review", "I4 ecg", "ECG without clinically significant abnormality", False)]
    result = TrialResult(researchStudy="nct00000001", verdict="possibly-eligible", criteria=[
        CriterionResult(id="001-I4", type="inclusion", text="Organ function adequate", status="unknown",
                        evidence=[Evidence(value="Weird lab panel", note="could not be classified — review")]),
        CriterionResult(id="001-I4.ecg", type="review", text="ECG without clinically significant abnormality",
                        status="unknown", evidence=[Evidence(note="clinician review: ECG read by a cardiologist")]),
    ])
    [card] = build_cards([_trial(crit)], [result], "p1", "h1", set(), app_url=APP_URL)
    assert "**To confirm:** ECG read by a cardiologist" in card.detail
    assert "Could not be classified, review:** Weird lab panel" in card.detail
    assert card.summary == "Possibly eligible: A trial (NCT00000001) — 1 record to review"
    assert card.extension == {"trial-cds": result.model_dump(mode="json")}


def test_summary_stays_under_140_and_never_cuts_a_word() -> None:
    long = "Autologous Anti-CD19 Chimeric Antigen Receptor T-cell Therapy for Severe Refractory Systemic Lupus " \
           "Erythematosus with Lupus Nephritis in Adults and Adolescents"
    result = TrialResult(researchStudy="nct00000001", verdict="possibly-eligible", criteria=[
        CriterionResult(id="x-I1", type="inclusion", text="t", status="unknown",
                        missing=[Coding(system="http://loinc.org", code="2160-0", display="Creatinine [Mass/volume] in Serum or Plasma")])])
    trial = _trial([CriterionDef("x-I1", "inclusion", "I1", "t", False)], title=long)
    text = summary(trial, result, read_result(trial, result, set()))
    assert len(text) < 140 and text.endswith("(NCT00000001)")
    shown = text.split(": ", 1)[1].rsplit(" (", 1)[0].rstrip("…")
    assert long.startswith(shown) and long[len(shown)] == " ", "cut at a word boundary"


def test_shorten_never_cuts_mid_word() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Zs", "Cc")), min_size=1, max_size=15),
                    min_size=1, max_size=30), st.integers(min_value=8, max_value=120))
    def check(words: list[str], limit: int) -> None:
        value = " ".join(words)
        out = shorten(value, limit)
        if len(value) <= limit:
            assert out == value
            return
        assert out.endswith("…")
        kept = out[:-1]
        stripped_words = kept.split(" ")
        # every kept word is a whole word of the input (trailing punctuation may be trimmed)
        for i, w in enumerate(stripped_words):
            if i < len(stripped_words) - 1:
                assert w == words[i]
            else:
                assert words[i].startswith(w) and (w == words[i] or not w or w.rstrip(" ,;:-–—(/") == w)
                assert len(kept) <= limit or len(stripped_words) == 1

    check()


def test_card_uuid_is_the_smart_app_context() -> None:
    crit = [CriterionDef("x-I1", "inclusion", "I1", "t", False)]
    result = TrialResult(researchStudy="nct00000001", verdict="likely-eligible",
                         criteria=[CriterionResult(id="x-I1", type="inclusion", text="t", status="met")])
    [card] = build_cards([_trial(crit)], [result], "secret-patient", "hook-1", set(), app_url=APP_URL)
    assert card.uuid == card_uuid("hook-1", "nct00000001")
    smart = [link for link in card.links or [] if link.type == "smart"]
    assert smart and smart[0].appContext == card.uuid
    [no_app] = build_cards([_trial(crit)], [result], "secret-patient", "hook-1", set())
    assert all(link.type != "smart" for link in no_app.links or [])
