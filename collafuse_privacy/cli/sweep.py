"""``sweep``, ``report`` and ``demo``: grids of runs and the report over them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import UserError
from ..run.layout import SWEEP_INDEX
from ..eval.report import write_report
from ..orchestration import load_sweep, run_sweep
from .common import DEVICE, embedded, main, user_errors


def _sweep_and_report(sweep_file, out, jobs, device, quiet, report: bool, seeds=None, executor="local", ray=None):
    sw = load_sweep(sweep_file, out, device=device, seeds=seeds)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if jobs is None:  # demo: one cell per core, one thread each (faster than two threads per cell here)
        import os

        jobs = max(1, min(os.cpu_count() or 1, len(sw.cells)))
    index = run_sweep(sw, jobs=jobs, log=log, quiet=quiet, executor=executor, ray=ray)
    if report:
        res = write_report([out], log=log)
        return index, res
    return index, None


@main.command()
@click.option("--config", "sweep_file", type=click.Path(), required=True, help="Sweep YAML: base (or config) + grid (+ include, stages).")
@click.option("--out", type=click.Path(), required=True, help="Sweep directory; each cell is a run in OUT/cells/<hash>. Rerunning resumes.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Cells run in parallel processes.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Train every setting with K seeds (default: the sweep file's 'seeds', else 1).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: --jobs processes on this machine; ray: each cell a Ray task (pip install -e '.[ray]').")
@click.option("--address", default=None, help="Ray cluster to join (HOST:PORT, ray://HOST:PORT, auto); default: a local Ray.")
@click.option("--cpus-per-cell", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ray: CPUs (and torch threads) per cell.")
@click.option("--gpus-per-cell", type=click.FloatRange(min=0), default=0, show_default=True, help="Ray: GPUs per cell.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def sweep(sweep_file, out, jobs, seeds, executor, address, cpus_per_cell, gpus_per_cell, device, quiet):
    """Run a grid of runs (train, sample, evaluate, attacks, privacy), skipping finished cells."""
    if executor != "ray" and (address or cpus_per_cell != 1 or gpus_per_cell):
        raise UserError("--address, --cpus-per-cell and --gpus-per-cell apply to --executor ray")
    ray = {"address": address, "cpus_per_cell": cpus_per_cell, "gpus_per_cell": gpus_per_cell}
    index, _ = _sweep_and_report(sweep_file, Path(out), jobs, device, quiet, report=False, seeds=seeds,
                                 executor=executor, ray=ray)  # fmt: skip
    failed = [c for c in index.cells if c.status != "done"]
    click.echo(str(Path(out) / SWEEP_INDEX))
    if failed:
        sys.exit(1)


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="Where report.md/.html and figures/ go (default: the first DIR).")
@click.option("--no-screenshot", is_flag=True, help="Do not render the report's first screen with headless Chromium.")
@user_errors
def report(dirs, out, no_screenshot):
    """Report from run and sweep directories: trade-off plot, tables, ROC, reconstructions, samples."""
    res = write_report(list(dirs), out=out, screenshot=not no_screenshot, log=lambda m: click.echo(m, err=True))
    click.echo(res["report_html"])


@main.command()
@click.option("--config", "sweep_file", type=click.Path(), default=None, help="Sweep YAML (default: embedded configs/sweep-default.yaml).")
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True, help="Sweep directory; rerunning resumes.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Cells run in parallel processes (default: one per CPU core).")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def demo(sweep_file, out, jobs, device, quiet):
    """The main job: the default sweep on the embedded data, end to end, then the report."""
    import time

    t0 = time.perf_counter()
    index, res = _sweep_and_report(sweep_file or embedded("sweep-default.yaml"), Path(out), jobs, device, quiet, report=True)
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {res['report_html']}", err=True)
    click.echo(res["report_html"])

