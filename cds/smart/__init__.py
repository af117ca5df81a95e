"""The SMART on FHIR clinician view (the whole checklist), served by the service at /app."""
