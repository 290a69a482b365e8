"""``train``: train clients and server in one process (or resume a run)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..lock import locked
from ..resolve import resolve
from ..run.directory import default_run_dir
from ..training import Session, Trainer, refuse_audit_dir
from .common import CONFIG, DEVICE, SET, load_cfg, main, user_errors


def train_run(cfg, out, quiet):
    """Train (or resume) ``cfg`` in ``out`` (default: a folder named from the resolved config)."""
    if out:
        refuse_audit_dir(out)
    resolved = resolve(cfg, Path(out) if out else None)  # protocol.target_epsilon -> the cut, before naming the run
    run_dir = Path(out) if out else default_run_dir(resolved.cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder")
    session = Session(resolved, run_dir, cfg.device, quiet)
    with locked(run_dir):
        trainer = Trainer(session)
        what = f"resuming at round {trainer.step}" if trainer.resumed else "new run"
        click.echo(f"run directory: {run_dir} ({what}; t_c = {trainer.cfg.t_c} of T = {cfg.diffusion.timesteps}, "
                   f"device {trainer.device})", err=True)  # fmt: skip
        summary = trainer.train()
    click.echo(
        f"trained {summary['steps']} rounds in {summary['seconds']:.0f} s; "
        f"the server received {summary['messages']} messages ({summary['bytes_sent'] / 1e6:.1f} MB, "
        f"{summary['received']} images), {summary['recorded']} of them recorded in server_view/",
        err=True,
    )
    return run_dir


@main.command()
@CONFIG
@SET
@click.option("--out", type=click.Path(), default=None, help="Run directory (default: runs/<data>-<protocol>-c<ratio>-<hash>). Rerunning resumes.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(config, overrides, out, device, quiet):
    """Train clients and server (or resume the run in --out).

    Every config key, its value and its default: `collafuse-privacy config`.
    """
    cfg = load_cfg(config, overrides, device)
    run_dir = train_run(cfg, out, quiet)
    click.echo(str(run_dir))
