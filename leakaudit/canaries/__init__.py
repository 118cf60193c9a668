"""Canaries: spec files, secret formats, generation, insertion and the manifest."""

from leakaudit.canaries.formats import FORMATS, SecretFormat, get_format, register_format
from leakaudit.canaries.manifest import Canary, CanaryManifest, generate_canaries, insert_canaries
from leakaudit.canaries.spec import CanarySpec, load_spec

__all__ = [
    "FORMATS",
    "Canary",
    "CanaryManifest",
    "CanarySpec",
    "SecretFormat",
    "generate_canaries",
    "get_format",
    "insert_canaries",
    "load_spec",
    "register_format",
]
