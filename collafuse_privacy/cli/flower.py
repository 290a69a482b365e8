"""``flower run / prepare / collect``: CollaFuse on Flower (optional extra ``.[flower]``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..flower.collect import collect
from ..flower.plan import prepare
from ..party import resolve_device
from ..resolve import resolve
from ..run.directory import default_run_dir
from .common import CONFIG, DEVICE, RUN_OUT, SET, load_cfg, main, user_errors


@main.group()
def flower() -> None:
    """CollaFuse on Flower (optional extra: pip install -e '.[flower]').

    `flower run` wraps a localhost deployment (a SuperLink and one SuperNode per client) or the
    simulation engine; `flower prepare` and `flower collect` are its first and last steps, for
    SuperNodes you start yourself (README: "Flower").
    """



RPM = click.option("--rounds-per-message", type=click.IntRange(min=1), default=None,
                   help="Training rounds a client runs per Flower message (default: train.checkpoint_every).")


def _flower_out(cfg, out):
    resolved = resolve(cfg, Path(out) if out else None)
    return Path(out) if out else default_run_dir(resolved.cfg)



@flower.command("run")
@CONFIG
@SET
@RUN_OUT
@click.option("--engine", type=click.Choice(["deployment", "simulation"]), default="deployment", show_default=True,
              help="deployment: a SuperLink and one SuperNode per client as local processes; simulation: Flower's "
                   "simulation engine (Ray) in this process.")
@click.option("--superlink", default=None, metavar="HOST:PORT",
              help="Submit to this running SuperLink instead of starting one (its SuperNodes are yours to start).")
@click.option("--node-timeout", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Seconds to wait for a client's SuperNode to (re)connect before the run stops.")
@RPM
@click.option("--sample/--no-sample", default=True, show_default=True,
              help="After training, sample.n collaborative samples per client through the same apps.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def flower_run(config, overrides, out, engine, superlink, node_timeout, rounds_per_message, sample, device, quiet):
    """Train through Flower (or resume), sample through the same apps, and write the standard run
    layout: the same server_view/ and weights as `train` at the same seed and secrets."""
    from ..flower.launch import require_flower, run_flower  # the optional extra

    require_flower()
    cfg = load_cfg(config, overrides, device)
    run_dir = _flower_out(cfg, out)
    s = run_flower(cfg, run_dir, engine=engine, device=resolve_device(cfg.device).type, superlink=superlink,
                   node_timeout=node_timeout, rounds_per_message=rounds_per_message, quiet=quiet,
                   sample=sample)  # fmt: skip
    click.echo(f"trained {s['steps']} rounds through Flower ({engine}, {s['threads']} threads per party) in "
               f"{s['seconds']:.0f} s; the server received {s['messages']} messages, {s['recorded']} rows recorded in "
               f"server_view/" + ("; samples in samples/" if s["sampled"] else ""), err=True)  # fmt: skip
    click.echo(str(run_dir))


@flower.command("prepare")
@CONFIG
@SET
@RUN_OUT
@RPM
@user_errors
def flower_prepare(config, overrides, out, rounds_per_message):
    """Set up a run for SuperNodes you start yourself: the run layout, flower/client-K/ folders
    (each client's data and secret; copy each to its client's machine) and flower/plan.json."""
    cfg = load_cfg(config, overrides, None)
    run_dir = _flower_out(cfg, out)
    plan = prepare(cfg, run_dir, rounds_per_message=rounds_per_message)
    click.echo(f"prepared {run_dir} for {plan.clients} clients ({plan.rounds_per_message} rounds per message)", err=True)
    click.echo(str(run_dir))


@flower.command("collect")
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A finished Flower run.")
@user_errors
def flower_collect(run_dir):
    """Join the parties' records of a finished Flower run into the standard run layout."""
    s = collect(run_dir)
    click.echo(f"collected {run_dir}: {s['steps']} rounds" + (", samples" if s["sampled"] else ""), err=True)

