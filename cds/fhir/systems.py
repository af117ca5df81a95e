"""Every FHIR URL the project writes or reads: canonical bases, code systems, extensions.

One home so that the build (cds.bundles), the runtime (cds.catalogue, cds.cards, cds.display,
cds.terminology) and the tests agree by construction, and so that the runtime never imports the
build module (which pulls in fhir.resources) just to learn a string.
"""

from __future__ import annotations

# -- the project's own canonical bases ------------------------------------------------------
BASE = "https://trial-cds.dev/fhir"  # ResearchStudy, Group, Library canonical URLs
SD = f"{BASE}/StructureDefinition"
VALUESET_BASE = "https://trial-cds.dev/ValueSet"
TRIALS_SYSTEM = "https://trial-cds.dev/trials"  # card source.topic: code = ResearchStudy.id
CRITERION_SYSTEM = "https://trial-cds.dev/criteria"
OVERRIDE_SYSTEM = "https://trial-cds.dev/override-reasons"
LOCAL_CODES = "https://trial-cds.dev/codes"  # scores and products with no standard code
SCREEN_LIBRARY_URL = f"{BASE}/Library/SLEScreen"

# -- the project's extensions ---------------------------------------------------------------
EXT_CRITERION_TEXT = f"{SD}/criterion-text"
EXT_CRITERION_READING = f"{SD}/criterion-reading"
EXT_CLINICIAN_REVIEW = f"{SD}/clinician-review"
EXT_COLLABORATOR = f"{SD}/collaborator"
EXT_CODE_SOURCE = f"{SD}/code-source"
EXT_INCLUDE_REASON = f"{SD}/include-reason"

# -- HL7 extensions and code systems --------------------------------------------------------
EXT_CQF_EXPRESSION = "http://hl7.org/fhir/StructureDefinition/cqf-expression"
EXT_RESEARCH_STUDY = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"
# R5 ResearchStudy.label (type short-title) carried into R4 by the cross-version extension.
EXT_R5_LABEL = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchStudy.label"
TITLE_TYPE = "http://hl7.org/fhir/title-type"
PHASE_SYSTEM = "http://terminology.hl7.org/CodeSystem/research-study-phase"

# -- external terminologies and registries --------------------------------------------------
CTGOV = "https://clinicaltrials.gov"
LOINC = "http://loinc.org"
SNOMEDCT = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
