"""Terminology: the catalogue's value sets, from their definitions to the engine's code service.

- `definitions`: `rules/valuesets/*.json` -> FHIR R4 ValueSets with a committed expansion
  (build time; ICD-10 and ICD-10-CM expanded from the official classifications).
- `codeservice`: ValueSet resources (bundles or a FHIR server) -> the expansions the CQL
  engine loads, one version per canonical URL.
- `txserver`: optional `$expand` of intensional SNOMED CT definitions on a FHIR
  terminology server, cached, falling back to the committed expansion.
"""

from .codeservice import ValueSetExpansion, committed_value_sets, cql_value_sets, select_value_sets

__all__ = ["ValueSetExpansion", "committed_value_sets", "cql_value_sets", "select_value_sets"]
