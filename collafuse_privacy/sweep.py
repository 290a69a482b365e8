"""Moved to :mod:`collafuse_privacy.orchestration` (sweep file, cells, executors, index); these names stay
reachable here for the CLI and the report until they import from there."""

from .orchestration.cells import CellStatus, read_cell, read_status, record_failure, run_cell  # noqa: F401
from .orchestration.sweep import IndexCell, SweepIndex, read_index, run_sweep  # noqa: F401
from .orchestration.sweep_file import Cell, Sweep, load_sweep, short_label  # noqa: F401
