"""Outbound HTTP: the URL policy every outbound call obeys, and the hardened session it runs on."""
