"""Trial metadata + CQL + ELM -> one FHIR R4 transaction Bundle per trial.

Each bundle is self-contained (the shared FHIRHelpers and SLECommon Libraries travel in every
bundle under the same ids), and every entry is a PUT with a stable id, so loading a bundle
twice, or two bundles that share a Library, changes nothing.

Validation uses fhir.resources' R4B models: R4B's ResearchStudy, Group, Library, Organization,
Location and Bundle are wire-compatible with R4 (4.0.1) for every element written here, and the
package ships no R4 models any more.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from .engine.elm import closure, define_names, includes, library_name, library_version, value_set_urls
from .paths import BUNDLES_DIR, ELM_DIR, RULES_DIR
from .trialmeta import Criterion, Organization, Site, Threshold, Trial, load_trial, trial_files

BASE = "https://trial-cds.dev/fhir"
SD = f"{BASE}/StructureDefinition"
EXT_CQF_EXPRESSION = "http://hl7.org/fhir/StructureDefinition/cqf-expression"
EXT_CRITERION_TEXT = f"{SD}/criterion-text"
EXT_CRITERION_READING = f"{SD}/criterion-reading"
EXT_CLINICIAN_REVIEW = f"{SD}/clinician-review"
EXT_COLLABORATOR = f"{SD}/collaborator"
# R5 ResearchStudy.label (type short-title) carried into R4 by the cross-version extension.
EXT_R5_LABEL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchStudy.label"
TITLE_TYPE = "http://hl7.org/fhir/title-type"
CRITERION_SYSTEM = "https://trial-cds.dev/criteria"
TRIALS_SYSTEM = "https://trial-cds.dev/trials"
CTGOV = "https://clinicaltrials.gov"
PHASE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-study-phase"
UCUM = "http://unitsofmeasure.org"

Resource = dict[str, Any]


def group_id(trial_id: str) -> str:
    return f"{trial_id}-eligibility"


def rules_library_id(trial_id: str) -> str:
    return f"{trial_id}-rules"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _compact(elm: Mapping[str, Any]) -> str:
    return json.dumps(elm, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def library_resource(lib_id: str, elm: Mapping[str, Any], cql: str, *, title: str, description: str) -> Resource:
    """A FHIR logic Library carrying the CQL and its ELM; depends-on its includes."""
    name = library_name(elm)
    deps = [{"type": "depends-on", "resource": f"{BASE}/Library/{dep}"} for dep in sorted(set(includes(elm).values()))]
    deps += [{"type": "depends-on", "resource": url} for url in sorted(value_set_urls(elm))]
    res: Resource = {
        "resourceType": "Library",
        "id": lib_id,
        "url": f"{BASE}/Library/{lib_id}",
        "version": library_version(elm) or "1.0.0",
        "name": name.replace("-", "_"),
        "title": title,
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]},
        "description": description,
        "content": [
            {"contentType": "text/cql", "title": f"{name}.cql", "data": _b64(cql)},
            {"contentType": "application/elm+json", "title": f"{name}.json", "data": _b64(_compact(elm))},
        ],
    }
    if deps:
        res["relatedArtifact"] = deps
    return res


def _quantity(value: float | None, unit: str | None, comparator: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if comparator:
        q["comparator"] = comparator
    if unit:
        q.update({"unit": unit, "system": UCUM, "code": unit})
    return q


def _value(threshold: Threshold | None) -> dict[str, Any]:
    """Group.characteristic.value[x] (required in R4): the threshold, else `true`."""
    if threshold is None:
        return {"valueBoolean": True}
    if threshold.kind == "quantity":
        return {"valueQuantity": _quantity(threshold.value, threshold.unit, threshold.comparator)}
    if threshold.kind == "range":
        rng: dict[str, Any] = {}
        if threshold.low is not None:
            rng["low"] = _quantity(threshold.low, threshold.unit)
        if threshold.high is not None:
            rng["high"] = _quantity(threshold.high, threshold.unit)
        return {"valueRange": rng}
    assert threshold.code is not None
    return {"valueCodeableConcept": {"coding": [threshold.code.model_dump(exclude_none=True)]}}


def characteristic(trial: Trial, c: Criterion) -> dict[str, Any]:
    codings = [{"system": CRITERION_SYSTEM, "code": c.id, "display": f"{c.kind} {c.id}"}]
    if c.code is not None:
        codings.append(c.code.model_dump(exclude_none=True))
    ext: list[dict[str, Any]] = [
        {"url": EXT_CQF_EXPRESSION, "valueExpression": {
            "language": "text/cql.identifier",
            "expression": c.define,
            "reference": f"{BASE}/Library/{rules_library_id(trial.id)}",
        }},
        {"url": EXT_CRITERION_TEXT, "valueString": c.text},
    ]
    if c.reading:
        ext.append({"url": EXT_CRITERION_READING, "valueString": c.reading})
    if c.review:
        ext.append({"url": EXT_CLINICIAN_REVIEW, "valueBoolean": True})
    return {
        "extension": ext,
        "code": {"coding": codings, "text": c.text[:200]},
        **_value(c.threshold),
        "exclude": c.type == "exclusion",
    }


def group_resource(trial: Trial) -> Resource:
    return {
        "resourceType": "Group",
        "id": group_id(trial.id),
        "name": f"Eligibility: {trial.title}"[:250],
        "type": "person",
        "actual": False,
        "characteristic": [characteristic(trial, c) for c in trial.criteria],
    }


def organization_resource(org: Organization) -> Resource:
    return {"resourceType": "Organization", "id": org.id, "active": True, "name": org.name}


def location_resource(site: Site) -> Resource:
    address: dict[str, Any] = {"country": site.country}
    if site.city:
        address["city"] = site.city
    if site.state:
        address["state"] = site.state
    return {"resourceType": "Location", "id": site.id, "status": "active", "name": site.name, "address": address}


def research_study(trial: Trial) -> Resource:
    identifiers = []
    if trial.nct:
        identifiers.append({"use": "official", "system": CTGOV, "value": trial.nct})
    identifiers.append({"use": "secondary" if trial.nct else "official", "system": TRIALS_SYSTEM,
                        "value": trial.local_identifier or trial.id})
    res: Resource = {
        "resourceType": "ResearchStudy",
        "id": trial.id,
        "identifier": identifiers,
        "title": trial.title,
        "status": trial.status,
        "primaryPurposeType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/research-study-prim-purp-type", "code": "treatment"}]},
        "category": [{"text": "Interventional"}],
        "focus": [{"text": "CAR-T cell therapy"}],
        "condition": [{"coding": [c.model_dump(exclude_none=True)]} for c in trial.conditions],
        "keyword": [{"text": k} for k in trial.keywords],
        "description": trial.description,
        "enrollment": [{"reference": f"Group/{group_id(trial.id)}"}],
        "sponsor": {"reference": f"Organization/{trial.sponsor.id}", "display": trial.sponsor.name},
        "site": [{"reference": f"Location/{s.id}", "display": s.name} for s in trial.sites],
    }
    if trial.phase != "n-a":
        res["phase"] = {"coding": [{"system": PHASE_SYSTEM, "code": trial.phase}]}
    if trial.official_title:
        res.setdefault("extension", []).append({"url": f"{SD}/official-title", "valueString": trial.official_title})
    if trial.short_title:
        res.setdefault("extension", []).append({"url": EXT_R5_LABEL, "extension": [
            {"url": "type", "valueCodeableConcept": {"coding": [{"system": TITLE_TYPE, "code": "short-title"}]}},
            {"url": "value", "valueString": trial.short_title}]})
    for org in trial.collaborators:
        res.setdefault("extension", []).append({"url": EXT_COLLABORATOR,
                                                 "valueReference": {"reference": f"Organization/{org.id}", "display": org.name}})
    period: dict[str, str] = {}
    if trial.start:
        period["start"] = trial.start.isoformat()
    if trial.end:
        period["end"] = trial.end
    if period:
        res["period"] = period
    if trial.arms:
        res["arm"] = [{"name": a.name, "type": {"text": a.type}, "description": a.description} for a in trial.arms]
    if trial.contacts:
        res["contact"] = [{
            "name": c.name,
            "telecom": ([{"system": "email", "value": c.email}] if c.email else [])
            + ([{"system": "phone", "value": c.phone}] if c.phone else []),
        } for c in trial.contacts]
    artifacts = []
    if trial.page:
        artifacts.append({"type": "documentation", "label": "ClinicalTrials.gov" if trial.nct else "Trial page", "url": trial.page})
    artifacts.append({"type": "depends-on", "label": "Eligibility rules (CQL)", "resource": f"{BASE}/Library/{rules_library_id(trial.id)}"})
    res["relatedArtifact"] = artifacts
    if trial.enrollment:
        res.setdefault("extension", []).append({"url": f"{SD}/target-enrollment", "valueInteger": trial.enrollment})
    return res


def validate(resource: Mapping[str, Any]) -> None:
    """Raise pydantic.ValidationError when `resource` is not valid FHIR (R4B models)."""
    get_fhir_model_class(str(resource["resourceType"])).model_validate(dict(resource))


def transaction(resources: Iterable[Resource], bundle_id: str) -> dict[str, Any]:
    entries = []
    for r in resources:
        entries.append({
            "fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        })
    return {"resourceType": "Bundle", "id": bundle_id, "type": "transaction", "entry": entries}


SHARED_LIBRARIES = {
    "FHIRHelpers": "FHIR to CQL system type conversions (FHIRHelpers 4.0.1, trial-cds edition).",
    "SLECommon": "Codes and shared eligibility functions for the SLE CAR-T trial rules.",
    "SLEScreen": "The catalogue's population (active SLE): patients outside it get no cards.",
}


def value_set_closure(urls: Iterable[str], valuesets: Mapping[str, Resource]) -> list[str]:
    """`urls` and the value sets they include (compose.include.valueSet), members first."""
    out: list[str] = []

    def visit(url: str) -> None:
        if url in out:
            return
        if url not in valuesets:
            raise ValueError(f"the rules use value set {url}, which rules/valuesets/ does not define")
        for inc in valuesets[url]["compose"].get("include") or []:
            for member in inc.get("valueSet") or []:
                visit(member)
        out.append(url)

    for url in sorted(urls):
        visit(url)
    return out


def trial_resources(trial: Trial, elm: Mapping[str, Mapping[str, Any]], rules_dir: Path,
                    valuesets: Mapping[str, Resource] | None = None) -> list[Resource]:
    """Every resource of one trial's bundle: Libraries, the ValueSets they use, then the study."""
    if trial.library not in elm:
        raise ValueError(f"{trial.id}: no compiled ELM for library {trial.library} (run trial-cds build)")
    defined = set(define_names(elm[trial.library]))
    missing = [c.define for c in trial.criteria if c.define not in defined]
    if missing:
        raise ValueError(f"{trial.id}: criteria name defines missing from {trial.library}.cql: {missing}")
    out: list[Resource] = []
    for name, description in SHARED_LIBRARIES.items():
        if name in elm:
            out.append(library_resource(name, elm[name], (rules_dir / f"{name}.cql").read_text(encoding="utf-8"),
                                        title=name, description=description))
    out.append(library_resource(rules_library_id(trial.id), elm[trial.library],
                                (rules_dir / f"{trial.library}.cql").read_text(encoding="utf-8"),
                                title=f"Eligibility rules: {trial.title}"[:250],
                                description=f"One CQL define per eligibility criterion of {trial.id}."))
    if valuesets is not None:
        used = {url for lib in closure([trial.library, *[n for n in SHARED_LIBRARIES if n in elm]], elm)
                for url in value_set_urls(elm[lib])}
        out.extend(valuesets[url] for url in value_set_closure(used, valuesets))
    out.extend(organization_resource(o) for o in [trial.sponsor, *trial.collaborators])
    out.extend(location_resource(s) for s in trial.sites)
    out.append(group_resource(trial))
    out.append(research_study(trial))
    return out


def bundle_text(bundle: Mapping[str, Any]) -> str:
    return json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"


class BundleBuildError(ValueError):
    """Some trials could not be built; `built` holds the bundles of the others."""

    def __init__(self, errors: list[str], built: dict[str, dict[str, Any]]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.built = built


def build_bundles(rules_dir: Path = RULES_DIR, elm_dir: Path = ELM_DIR) -> dict[str, dict[str, Any]]:
    """file name -> Bundle, for every trial and for catalogue.json (all trials, shared once).

    Raises BundleBuildError naming every trial that failed (invalid metadata, a define that
    is not in the ELM, a resource that does not validate); the others are in `.built`.
    """
    from pydantic import ValidationError

    from .engine import load_elm_dir

    from .terminology.definitions import build_valuesets

    elm = load_elm_dir(elm_dir)
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, Resource] = {}
    errors: list[str] = []
    valuesets = build_valuesets(rules_dir / "valuesets", os.environ.get("TRIAL_CDS_TERMINOLOGY_URL") or None)
    for vs in valuesets.values():
        validate(vs)
    for path in trial_files(rules_dir):
        try:
            trial = load_trial(path)
            resources = trial_resources(trial, elm, rules_dir, valuesets)
            for r in resources:
                if r["resourceType"] != "ValueSet":
                    validate(r)
        except (ValidationError, ValueError, OSError) as exc:
            errors.append(f"{path.name}: {exc}")
            continue
        for r in resources:
            seen.setdefault(f"{r['resourceType']}/{r['id']}", r)
        out[f"{trial.id}.json"] = transaction(resources, f"{trial.id}-bundle")
    out["catalogue.json"] = transaction(seen.values(), "trial-cds-catalogue")
    if errors:
        raise BundleBuildError(errors, out)
    return out


def write_bundles(bundles_dir: Path = BUNDLES_DIR, rules_dir: Path = RULES_DIR, elm_dir: Path = ELM_DIR) -> list[Path]:
    """Write the bundles; remove trial bundles whose trial is gone. Returns files changed."""
    failure: BundleBuildError | None = None
    try:
        bundles = build_bundles(rules_dir, elm_dir)
    except BundleBuildError as exc:
        failure, bundles = exc, exc.built
    bundles_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, bundle in bundles.items():
        target = bundles_dir / name
        text = bundle_text(bundle)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(target)
    for old in bundles_dir.glob("*.json"):
        if old.name not in bundles and failure is None:
            old.unlink()
            changed.append(old)
    if failure is not None:
        raise failure
    return changed


def drifted_bundles(bundles_dir: Path = BUNDLES_DIR, rules_dir: Path = RULES_DIR, elm_dir: Path = ELM_DIR) -> list[str]:
    """Bundle files that differ from what the build would write now (or are missing/extra)."""
    bundles = build_bundles(rules_dir, elm_dir)
    drift = [name for name, b in bundles.items()
             if not (bundles_dir / name).exists() or (bundles_dir / name).read_text(encoding="utf-8") != bundle_text(b)]
    drift += [p.name for p in bundles_dir.glob("*.json") if p.name not in bundles]
    return sorted(drift)
