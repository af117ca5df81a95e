"""The CDS Hooks 2.0 contract over real HTTP: discovery, card shapes, the trial-cds extension,
card uuids, ordering, the empty answer for a patient without SLE (DESIGN, "CDS Hooks contract")."""

from __future__ import annotations

import re
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from cds.app import SERVICE_ID
from cds.fhir.systems import TRIALS_SYSTEM
from cds.hooks.models import CardsResponse, Discovery

from .conftest import NO_SLE, HookCall, Service, hook_body, no_sle_resources

TRIAL_IDS = {"tongji-cd19-bcma-cart-sle", "zju-children-cd19-cart-sle", "nct07318259", "nct06710717", "nct06350110"}
PREFETCH_TYPES = {"Patient", "Condition", "Observation", "MedicationRequest", "MedicationStatement", "Procedure",
                  "Immunization"}


# The card extension, exactly as DESIGN states it (unknown fields forbidden).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class XCoding(_Strict):
    system: str | None = None
    code: str
    display: str | None = None


class XEvidence(_Strict):
    reference: str | None
    value: float | int | str | bool | None
    unit: str | None
    date: str | None
    note: str | None


class XCriterion(_Strict):
    id: str
    type: Literal["inclusion", "exclusion", "review"]
    text: str
    status: Literal["met", "not-met", "unknown"]
    evidence: list[XEvidence]
    missing: list[XCoding]


class XTrialCds(_Strict):
    researchStudy: str
    verdict: Literal["likely-eligible", "possibly-eligible"]
    criteria: list[XCriterion]


def test_discovery_validates_and_names_the_service(service: Service) -> None:
    resp = service.http.get(service.url("/cds-services"), timeout=30)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    discovery = Discovery.model_validate(resp.json())  # unknown fields are forbidden
    [svc] = discovery.services
    assert (svc.id, svc.hook) == (SERVICE_ID, "patient-view")
    assert svc.title and svc.description and svc.usageRequirements
    assert svc.prefetch, "prefetch templates are derived from the ELM"
    types = set()
    for key, template in svc.prefetch.items():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", key), key
        # Spec "Prefetch query restrictions": instance read or type search bound to the patient.
        assert re.fullmatch(r"Patient/\{\{context\.patientId\}\}|[A-Z][A-Za-z]+\?patient=\{\{context\.patientId\}\}(&.*)?",
                            template), template
        assert len(template) < 8000
        types.add(template.split("/")[0].split("?")[0])
    assert types == PREFETCH_TYPES


def test_cards_validate_against_the_cds_hooks_shapes(fit_by_prefetch: HookCall) -> None:
    assert fit_by_prefetch.status == 200, fit_by_prefetch.doc
    response = CardsResponse.model_validate(fit_by_prefetch.doc)
    assert response.cards, "the likely-eligible patient gets cards"
    for card in response.cards:
        assert len(card.summary) < 140
        assert card.indicator == "info"
        assert card.uuid
        assert card.source.topic is not None
        assert card.source.topic.system == TRIALS_SYSTEM
        assert card.detail and len(card.detail.splitlines()) <= 12, "a short detail; the checklist is in the app"
        assert card.overrideReasons and all(r.display for r in card.overrideReasons)
        assert card.suggestions and card.selectionBehavior == "any"
        for s in card.suggestions:
            assert s.uuid and s.actions
            for a in s.actions:
                assert a.type == "create" and a.resource and a.resource["resourceType"] == "ServiceRequest"


def test_card_extension_is_the_machine_readable_result(fit_by_prefetch: HookCall) -> None:
    cards = fit_by_prefetch.doc["cards"]
    for card in cards:
        assert set(card["extension"]) == {"trial-cds"}
        ext = XTrialCds.model_validate(card["extension"]["trial-cds"])
        assert ext.researchStudy in TRIAL_IDS
        assert card["source"]["topic"]["code"] == ext.researchStudy  # topic code = ResearchStudy.id
        if ext.researchStudy.startswith("nct"):
            assert ext.researchStudy.upper() in card["summary"], "the summary names the trial's registry id"
        else:  # no registry id published: named by its short title, never by the internal id
            assert ext.researchStudy not in card["summary"] and "CAR-T" in card["summary"]
        assert ext.criteria and len({c.id for c in ext.criteria}) == len(ext.criteria)
        decided = [c for c in ext.criteria if c.type != "review"]
        assert not any(c.status == "not-met" and c.type == "inclusion" for c in decided), "excluded trials get no card"
        assert not any(c.status == "met" and c.type == "exclusion" for c in decided)
        if ext.verdict == "likely-eligible":
            assert all(c.status == "met" for c in decided if c.type == "inclusion")
        else:
            assert any(c.status == "unknown" for c in decided)
        for c in ext.criteria:
            if c.status == "unknown" and c.type != "review":
                assert c.missing or c.evidence, f"{c.id}: an unknown says what would decide it"
        if ext.researchStudy.startswith("nct"):
            assert any("clinicaltrials.gov" in link["url"] for link in card.get("links") or [])


def test_likely_cards_come_before_possibly_cards(fit_by_prefetch: HookCall) -> None:
    verdicts = [c["extension"]["trial-cds"]["verdict"] for c in fit_by_prefetch.doc["cards"]]
    assert verdicts[0] == "likely-eligible"
    assert "possibly-eligible" in verdicts
    assert verdicts == sorted(verdicts, key=lambda v: v != "likely-eligible")
    by_trial = {c["extension"]["trial-cds"]["researchStudy"]: c for c in fit_by_prefetch.doc["cards"]}
    assert by_trial["tongji-cd19-bcma-cart-sle"]["extension"]["trial-cds"]["verdict"] == "likely-eligible"


def test_card_uuids_are_stable_per_hook_instance_and_trial(fit_by_prefetch: HookCall, fit_by_prefetch_again: HookCall,
                                                           fit_by_fetch: HookCall) -> None:
    def uuids(call: HookCall) -> dict[str, Any]:
        return {c["extension"]["trial-cds"]["researchStudy"]: (c["uuid"], [s["uuid"] for s in c["suggestions"]])
                for c in call.doc["cards"]}

    first, again, other = uuids(fit_by_prefetch), uuids(fit_by_prefetch_again), uuids(fit_by_fetch)
    assert fit_by_prefetch.body["hookInstance"] == fit_by_prefetch_again.body["hookInstance"]
    assert first == again, "same hookInstance + trial -> same card and suggestion uuids"
    assert first.keys() == other.keys()
    for trial in first:
        assert first[trial][0] != other[trial][0], "a new hookInstance gets new card uuids"
        assert not set(first[trial][1]) & set(other[trial][1])
    all_cards = [u for u, _ in first.values()]
    assert len(set(all_cards)) == len(all_cards), "card uuids differ between trials"


def test_patient_without_sle_gets_no_cards(service: Service) -> None:
    resp, _elapsed = service.hook(hook_body(NO_SLE, prefetch=service.prefetch(no_sle_resources(), NO_SLE)))
    assert resp.status_code == 200
    assert resp.json() == {"cards": []}


def test_server_timing_names_the_phases(fit_by_prefetch: HookCall) -> None:
    timing = fit_by_prefetch.headers.get("server-timing", "")
    phases = dict(re.findall(r"([a-z]+);dur=([0-9.]+)", timing))
    assert {"parse", "record", "cql", "cards", "total"} <= phases.keys(), timing
    assert float(phases["total"]) >= float(phases["cql"]) > 0


def test_audit_keeps_no_patient_id(service: Service, fit_by_prefetch: HookCall) -> None:
    rows = [r for r in service.state.store.audit_rows() if r["hook_instance"] == fit_by_prefetch.body["hookInstance"]]
    assert rows and rows[0]["status"] == 200 and rows[0]["data_source"] == "prefetch"
    assert all(fit_by_prefetch.body["context"]["patientId"] not in str(r) for r in rows)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/cds-services/no-such-service", 404),
    ("POST", "/cds-services/no-such-service", 404),
    ("GET", f"/cds-services/{SERVICE_ID}", 405),
])
def test_unknown_routes_answer_json_errors(service: Service, method: str, path: str, status: int) -> None:
    resp = service.http.request(method, service.url(path), json={}, timeout=30)
    assert resp.status_code == status
    assert "error" in resp.json()
