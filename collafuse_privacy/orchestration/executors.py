"""How a sweep runs its cells: one registered executor per way (``local``: one after the other in this
process; ``process``: ``jobs`` worker processes; ``ray``: every cell a Ray task, the optional extra
``.[ray]``, imported only when that executor runs).

An executor is ``run(todo, stages_of, secrets, *, jobs, log, quiet, options)``: it runs every cell of
``todo`` with :func:`~.cells.run_cell` (``stages_of(cell)`` its stages), so every executor resumes
and gives the same numbers. ``run_sweep`` picks it by name (``--executor``).

Ray: each task runs with ``cpus_per_cell`` torch threads (the local executor's ``--jobs 2`` on two
cores: one thread per cell). The sweep directory must be on a filesystem every Ray node sees (the
local machine, or a shared mount on a cluster). A task whose worker dies (killed, out of memory) is
retried by Ray up to ``max_retries`` times; the retry resumes the cell from its checkpoint (the dead
worker's lock on the cell is released with its process). A cell still not done after that is
recorded as failed (``cell.json``) and the other cells finish. A cell whose stage raises is recorded
as failed by ``run_cell`` itself, as locally.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import UserError
from ..registry import Registry
from .cells import record_failure, run_cell, run_cell_job

EXECUTORS: Registry = Registry("executor")


@EXECUTORS.register("local")
def run_local(todo, stages_of: Callable, secrets, *, jobs: int = 1, log=print, quiet: bool = False,
              options: Optional[dict] = None) -> None:  # fmt: skip
    """The cells one after the other, in this process."""
    for i, cell in enumerate(todo):
        log(f"cell {i + 1}/{len(todo)}: {cell.label}")
        run_cell(cell, stages_of(cell), quiet=quiet, log=log, secrets=secrets)


@EXECUTORS.register("process")
def run_processes(todo, stages_of: Callable, secrets, *, jobs: int = 2, log=print, quiet: bool = False,
                  options: Optional[dict] = None) -> None:  # fmt: skip
    """The cells in ``jobs`` spawned worker processes, each with ``threads // jobs`` torch threads."""
    threads = max(1, torch.get_num_threads() // jobs)  # the command's threads (--threads), divided
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_die_with_parent) as pool:
        list(pool.map(run_cell_job, [(c, stages_of(c), threads, secrets) for c in todo]))


def _die_with_parent() -> None:
    """A worker ends when the sweep process does (Linux: PR_SET_PDEATHSIG), so a killed sweep
    leaves no cell training on in the background (its cells resume on the next run)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
        except OSError:  # no libc by that name: the worker then ends with its cell
            pass


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """One clear line, before Ray's own (slow, verbose) connection attempts, when nothing answers."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@EXECUTORS.register("ray")
def run_ray(todo, stages_of: Callable, secrets, *, jobs: int = 1, log=print, quiet: bool = False,
            options: Optional[dict] = None) -> None:  # fmt: skip
    """Every cell a Ray task (``options``: ``address``, ``cpus_per_cell``, ``gpus_per_cell``, ``max_retries``)."""
    run_cells(todo, stages_of, secrets, log=log, **(options or {}))


def run_cells(todo, stages_of: Callable, secrets, *, address: Optional[str] = None, cpus_per_cell: int = 1,
              gpus_per_cell: float = 0, max_retries: int = 2, log: Callable[[str], None] = print) -> None:  # fmt: skip
    """Run the cells ``todo`` as Ray tasks and wait for all of them (module docstring)."""
    try:
        import ray  # the optional extra
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    if cpus_per_cell < 1 or gpus_per_cell < 0:
        raise UserError(f"--cpus-per-cell must be >= 1 and --gpus-per-cell >= 0, got {cpus_per_cell}, {gpus_per_cell}")
    if address:
        _check_reachable(address)
    started = not ray.is_initialized()
    if started:
        try:
            kw = {"address": address} if address else {"num_cpus": os.cpu_count() or 1, "include_dashboard": False}
            ray.init(log_to_driver=False, configure_logging=False, **kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"cannot start or join Ray{f' at {address}' if address else ''}: {first}") from None
    try:
        res = ray.cluster_resources()
        if gpus_per_cell and res.get("GPU", 0) < gpus_per_cell:
            raise UserError(f"--gpus-per-cell {gpus_per_cell}: the Ray cluster has {res.get('GPU', 0):g} GPU(s)")
        if res.get("CPU", 0) < cpus_per_cell:
            raise UserError(f"--cpus-per-cell {cpus_per_cell}: the Ray cluster has {res.get('CPU', 0):g} CPU(s)")
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=max_retries,
                          retry_exceptions=False)(run_cell_job)  # fmt: skip
        todo = [dataclasses.replace(c, dir=str(Path(c.dir).resolve())) for c in todo]  # workers' cwd may differ
        refs = {task.remote((c, stages_of(c), cpus_per_cell, secrets)): c for c in todo}
        log(f"ray: {len(refs)} cells as tasks ({cpus_per_cell} CPU, {gpus_per_cell:g} GPU each) on "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")  # fmt: skip
        pending = list(refs)
        t0 = time.perf_counter()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                cell = refs[r]
                try:
                    rec = ray.get(r)
                    log(f"[{cell.label}] {rec.status} ({time.perf_counter() - t0:.0f} s)")
                except ray.exceptions.RayError as exc:  # the worker died on every try
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    record_failure(cell, f"Ray task lost after {max_retries} retries: {first}"[:500])
                    log(f"[{cell.label}] FAILED: the Ray worker died ({first})")
    finally:
        if started:
            ray.shutdown()

