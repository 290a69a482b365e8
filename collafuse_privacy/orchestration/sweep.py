"""``collafuse-privacy sweep``: a grid of ordinary runs, resumable, failure-tolerant.

The sweep file (:mod:`.sweep_file`) gives the cells; each is an ordinary run directory
``OUT/cells/<hash>`` run by :mod:`.cells`; an executor (:mod:`.executors`: local, process, ray) runs
the cells still to do; ``OUT/sweep.json`` (:class:`SweepIndex`, written here) lists every cell with
its status, which ``report`` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Optional

from ..config import config_hash, from_dict
from ..data import load_dataset
from ..errors import UserError
from ..lock import locked
from ..run.codec import write_json
from ..run.layout import SWEEP_INDEX
from ..run.schemas.sweep import IndexCell, SweepIndex
from .cells import pending_stages, read_status, sweep_secrets
from .executors import EXECUTORS
from .sweep_file import Cell, Sweep
from ..eval.features import get_extractor


def _write_index(out: Path, index: SweepIndex) -> None:
    write_json(out / SWEEP_INDEX, index)


def run_sweep(sweep: Sweep, jobs: int = 1, log: Callable[[str], None] = print, quiet: bool = False,
              executor: str = "local", ray: Optional[dict] = None) -> SweepIndex:  # fmt: skip
    """Run every cell (resuming), write ``OUT/sweep.json``; returns it.

    ``executor``: ``"local"`` (``jobs`` processes when ``jobs > 1``: the ``process`` executor) or any
    other registered executor (:data:`.executors.EXECUTORS`; ``ray`` holds the Ray executor's ``address``,
    ``cpus_per_cell``, ``gpus_per_cell``)."""
    if executor not in ("local", "ray"):
        raise UserError(f"executor must be 'local' or 'ray', got {executor!r}")
    with locked(sweep.out):
        return _run_sweep(sweep, jobs, log, quiet, executor, ray or {})


def _run_sweep(sweep: Sweep, jobs: int, log: Callable[[str], None], quiet: bool, executor: str = "local",
               ray: Optional[dict] = None) -> SweepIndex:  # fmt: skip
    out = sweep.out
    entries = [IndexCell(id=c.id, dir=os.path.relpath(c.dir, out), overrides=c.overrides, label=c.label,
                         setting=c.setting) for c in sweep.cells]  # fmt: skip
    _write_index(out, SweepIndex(sweep.name, sweep.stages, entries))
    todo = [c for c in sweep.cells
            if pending_stages(read_status(Path(c.dir)), sweep.cell_stages(c),
                              config_hash(from_dict(c.config), full=True))]  # fmt: skip
    log(f"sweep '{sweep.name}': {len(sweep.cells)} cells, {len(sweep.cells) - len(todo)} already done -> {out}")
    # DP-SGD cells cost about twice as much: start them first so they do not finish last alone
    todo.sort(key=lambda c: (not c.config["defense"]["client_dp"]["enabled"] and "audit" not in c.stages))
    secrets = sweep_secrets(out, sweep.cells)
    if executor == "local" and jobs > 1 and len(todo) > 1:
        executor = "process"
    if executor != "local" and "evaluate" in sweep.stages:
        _prepare_extractors(todo, sweep.stages["evaluate"], log)
    if todo:
        EXECUTORS.get(executor)(todo, sweep.cell_stages, secrets, jobs=jobs, log=log, quiet=quiet, options=ray)
    for i, c in enumerate(sweep.cells):
        rec = read_status(Path(c.dir))
        if rec is not None:
            entries[i] = dataclasses.replace(entries[i], status=rec.status, error=rec.error, seconds=rec.seconds)
    index = SweepIndex(sweep.name, sweep.stages, entries)
    _write_index(out, index)
    failed = [e for e in entries if e.status != "done"]
    log(f"sweep '{sweep.name}': {len(entries) - len(failed)} cells done, {len(failed)} failed"
        + "".join(f"\n  failed: {e.label}: {e.error}" for e in failed))  # fmt: skip
    return index


def _prepare_extractors(cells: list[Cell], opts: dict, log: Callable[[str], None]) -> None:
    """Train (or find shipped or cached) the offline FID classifier once per data set, before
    parallel cells would each train the same one. It depends on the data only, not on a
    cell's split or secrets (eval/features.py)."""
    seen = set()
    for cell in cells:
        cfg = from_dict(cell.config)
        key = json.dumps(cell.config["data"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            ds = load_dataset(cfg.data)
            _, note = get_extractor(opts.get("extractor", "auto"), dataset=ds)
            log(note)
        except UserError:
            pass  # the cell's own evaluate stage reports it
