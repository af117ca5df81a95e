"""Synthetic FHIR R4 data for tests, demos and benchmarks (never for real patients)."""
