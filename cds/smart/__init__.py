"""The SMART on FHIR clinician view (the whole checklist), served by the service at /app."""

APP_PATH = "/app"
LAUNCH_PATH = f"{APP_PATH}/launch.html"  # the card's `smart` link
