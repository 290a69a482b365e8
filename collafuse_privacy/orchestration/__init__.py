"""Running runs: the stages of a run (:mod:`.stages`, shared by the CLI and sweeps), the sweep file
(:mod:`.sweep_file`), one cell and its ``cell.json`` (:mod:`.cells`), the executors that run cells
(:mod:`.executors`: local, process, ray) and the sweep's index (:mod:`.sweep`).

Above training and sampling in the import order; the CLI and the report import it.
"""

from .cells import CellStatus, read_status, run_cell  # noqa: F401
from .executors import EXECUTORS  # noqa: F401
from .stages import STAGES  # noqa: F401
from ..run.schemas.sweep import SweepIndex, read_index  # noqa: F401  (the sweep's files, typed in run/)
from .sweep import run_sweep  # noqa: F401
from .sweep_file import Cell, Sweep, load_sweep  # noqa: F401
