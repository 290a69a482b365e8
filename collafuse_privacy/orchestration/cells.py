"""One cell of a sweep: an ordinary run directory, its stages run (or resumed) in order, and its status
file ``<cell>/cell.json`` (:class:`CellStatus`), which this module alone writes.

A cell that fails is recorded with its error (``cell.json`` and ``error.log``) and never raises, so the
other cells of a sweep go on. A cell whose full config changed since its stages ran reruns them
(training extends from its checkpoint, the later stages are recomputed).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch

from ..client_secrets import Secrets, make_secrets, read_secrets, write_secrets
from ..config import config_hash, from_dict
from ..io import atomic_write_text
from ..lock import locked
from ..run.codec import write_json
from ..run.layout import CELL, CELL_ERROR
from ..run.schemas.sweep import CellStatus, read_status
from .stages import STAGES
from .sweep_file import Cell



def _write_status(run_dir: Path, status: CellStatus) -> None:
    write_json(Path(run_dir) / CELL, status)


def record_failure(cell: Cell, error: str) -> None:
    """Mark a cell failed from outside it (its process died): ``cell.json`` keeps its finished stages."""
    run_dir = Path(cell.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    old = read_status(run_dir) or CellStatus(cell.id, cell.overrides, cell.label)
    _write_status(run_dir, dataclasses.replace(old, id=cell.id, label=cell.label, overrides=cell.overrides,
                                               status="failed", error=error))  # fmt: skip


def pending_stages(status: Optional[CellStatus], stages: dict, full_hash: str) -> list[str]:
    """Stages a cell still has to run: not done yet, done with other options, or done
    with another config (then all of them: training resumes, the rest is recomputed)."""
    if status is None:
        return list(stages)
    if (status.config_hash or full_hash) != full_hash:
        return list(stages)
    done, opts = set(status.stages_done), status.stage_options
    return [s for s in stages if s not in done or opts.get(s, stages[s]) != stages[s]]


def run_cell(cell: Cell, stages: dict, threads: Optional[int] = None, quiet: bool = True,
             log: Callable[[str], None] = print, secrets=None) -> CellStatus:  # fmt: skip
    """Run (or resume) every stage of one cell; never raises for a failing stage.

    Returns the cell's status (also in ``<cell>/cell.json``).
    """
    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(cell.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir):
        return _run_cell(cell, stages, run_dir, quiet, log, secrets)


def _run_cell(cell: Cell, stages: dict, run_dir: Path, quiet: bool, log, secrets) -> CellStatus:
    old = read_status(run_dir)
    cfg = from_dict(cell.config)
    full = config_hash(cfg, full=True)
    pending = pending_stages(old, stages, full)
    done = [s for s in (old.stages_done if old else []) if s in stages and s not in pending]
    status = CellStatus(cell.id, cell.overrides, cell.label, config_hash=full, stages_done=list(done),
                        stage_options={s: stages[s] for s in done}, status="running",
                        seconds=dict(old.seconds if old else {}))  # fmt: skip
    for stage, opts in stages.items():
        if stage in done:
            continue
        log(f"[{cell.label}] {stage}")
        t0 = time.perf_counter()
        try:
            extra = {"secrets": None if cfg.secrets.derive_from_seed else secrets} if stage in ("train", "audit") else {}
            STAGES.get(stage)(run_dir, cfg, device=cfg.device, log=lambda m: log(f"[{cell.label}] {m}"), quiet=quiet,
                              **opts, **extra)  # fmt: skip
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a failed cell must not stop the sweep
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            status = dataclasses.replace(status, status="failed", failed_stage=stage,
                                         error=f"{type(exc).__name__}: {msg}"[:500])  # fmt: skip
            atomic_write_text(run_dir / CELL_ERROR, traceback.format_exc())
            _write_status(run_dir, status)
            log(f"[{cell.label}] FAILED in {stage}: {status.error}")
            return status
        done.append(stage)
        status = dataclasses.replace(status, stages_done=list(done), stage_options={**status.stage_options, stage: opts},
                                     seconds={**status.seconds, stage: round(time.perf_counter() - t0, 2)})  # fmt: skip
        _write_status(run_dir, status)
    status = dataclasses.replace(status, status="done", error=None)
    _write_status(run_dir, status)
    return status


def run_cell_job(args) -> CellStatus:
    """``run_cell`` of ``(cell, stages, threads, secrets)`` in a worker (a process or a Ray task)."""
    cell, stages, threads, secrets = args
    return run_cell(cell, stages, threads=threads, quiet=True, log=lambda m: print(m, flush=True), secrets=secrets)


def sweep_secrets(out: Path, cells: list[Cell]):
    """One set of OS secrets for the cells that use them (``OUT/clients/secrets.json``, kept):
    every setting of the sweep then sees the same split, and cells differ only in what the
    sweep varies (and, per training seed, in the clients' draws). None when no cell needs them."""
    if all(c.config["secrets"]["derive_from_seed"] for c in cells):
        return None
    s = read_secrets(out)
    if s is None:
        s = make_secrets(from_dict({**cells[0].config, "secrets": {"derive_from_seed": False}}))
        write_secrets(out, s)
    return s if isinstance(s, Secrets) else None
