"""``collafuse-privacy report``: disclosure against image quality, from metrics files only.

Reads run directories and sweep directories (``sweep.json`` + ``cells/``) and writes
``report.md``, a self-contained ``report.html`` (images embedded as data URIs, no scripts,
opens from disk) and ``figures/*.png``. Every number comes from the runs' typed
``metrics/*.json`` (``collafuse_privacy.run``); a number that is missing is shown as
missing, with the reason the metrics file gives; a file of the wrong shape is a one-line
error. Five steps, one module each: :mod:`.collect` (numbers per run), :mod:`.analyse`
(Pareto front, knee, reading), :mod:`.figures` (the trade-off plot), :mod:`.tabulate` (the
tables), :mod:`.render` (Markdown, HTML, screenshot).
"""

from .analyse import disclosure_axes, knee, pareto_front, reading  # noqa: F401
from .collect import CellResult, collect, read_run  # noqa: F401
from .figures import tradeoff_figure  # noqa: F401
from .render import screenshot_report, write_report  # noqa: F401
from .tabulate import tables  # noqa: F401
