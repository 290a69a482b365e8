"""Moved to :mod:`collafuse_privacy.orchestration.executors` (the ``ray`` executor)."""

from .orchestration.executors import run_cells  # noqa: F401
