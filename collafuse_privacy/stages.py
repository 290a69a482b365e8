"""Moved to :mod:`collafuse_privacy.orchestration.stages` (this name stays for the CLI until it imports from there)."""

from .orchestration.stages import STAGES, stage  # noqa: F401
