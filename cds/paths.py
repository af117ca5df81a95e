"""Where the project's data lives.

The rules, the compiled ELM and the generated bundles are data beside the package (the
design's fixed top level), not package resources: an editable install and the Docker image
both keep them at the project root. `TRIAL_CDS_HOME` points elsewhere when needed.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("TRIAL_CDS_HOME") or Path(__file__).resolve().parents[1])
RULES_DIR = ROOT / "rules"
ELM_DIR = RULES_DIR / "elm"
BUNDLES_DIR = ROOT / "fhir_bundles"
PATIENTS_DIR = BUNDLES_DIR / "patients"
