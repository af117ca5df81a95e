"""Talking to FHIR servers: the EHR's (patient data) and catalogue servers (trials)."""
