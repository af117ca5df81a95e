"""CDS Hooks 2.0: discovery, patient-view and feedback (models and routes)."""
