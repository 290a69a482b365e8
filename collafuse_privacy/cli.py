"""Thin click CLI over plain functions (which never import click).

User errors are reported as one line with exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .errors import UserError


class CliError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors(fn):
    """Turn UserError (and an interrupt) into one line; keep tracebacks for real bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise CliError(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; rerun the same command to resume from the last checkpoint", err=True)
            sys.exit(130)

    return wrapper


DEVICE = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="auto picks CUDA when present (default: the config's 'device').",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="collafuse-privacy")
def main() -> None:
    """CollaFuse split diffusion, and what an honest-but-curious server learns."""


def _load_cfg(config, overrides, device):
    from .config import load_config

    if device is not None:
        overrides = list(overrides) + [f"device={device}"]
    return load_config(config, overrides)


def _train(cfg, out, quiet):
    from .rundir import default_run_dir
    from .training import Trainer, resolve_device

    run_dir = Path(out) if out else default_run_dir(cfg)
    trainer = Trainer(cfg, run_dir, resolve_device(cfg.device), quiet=quiet)
    what = f"resuming at round {trainer.step}" if trainer.resumed else "new run"
    click.echo(
        f"run directory: {run_dir} ({what}; t_c = {cfg.t_c} of T = {cfg.diffusion.timesteps}, device {trainer.device})",
        err=True,
    )
    summary = trainer.train()
    click.echo(
        f"trained {summary['steps']} rounds in {summary['seconds']:.0f} s; "
        f"the server received {summary['messages']} messages ({summary['bytes_sent'] / 1e6:.1f} MB), "
        f"{summary['recorded']} images recorded in server_view/",
        err=True,
    )
    return run_dir


@main.command()
@click.option("--config", "config", type=click.Path(), default=None, help="YAML config (default: embedded configs/default.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key by dotted path, e.g. protocol.cut_ratio=0.3.")
@click.option("--out", type=click.Path(), default=None, help="Run directory (default: runs/<data>-<protocol>-c<ratio>-<hash>). Rerunning resumes.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(config, overrides, out, device, quiet):
    """Train clients and server (or resume the run in --out)."""
    cfg = _load_cfg(config, overrides, device)
    run_dir = _train(cfg, out, quiet)
    click.echo(str(run_dir))


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Samples per client (default: the config's sample.n).")
@click.option("--seed", type=int, default=None, help="Sampling seed (default: the run's seed).")
@DEVICE
@user_errors
def sample(run_dir, n, seed, device):
    """Collaborative sampling: server down to the hand-over image, client to x0."""
    from .rundir import read_run_config
    from .sampling import sample_run

    cfg = read_run_config(run_dir)
    info = sample_run(run_dir, n=n, device=device or cfg.device, seed=seed)
    click.echo(
        f"{info['n']} samples for each of {info['clients']} clients (checkpoint step {info['step']}, t_c = {info['t_c']}) "
        f"-> {Path(run_dir) / 'samples'}",
        err=True,
    )
    click.echo(json.dumps(info))


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@click.option("--n", type=click.IntRange(min=2), default=None, help="Samples per client (default: the config's sample.n).")
@click.option("--extractor", type=click.Choice(["auto", "inception", "classifier"]), default="auto", show_default=True,
              help="Features for FID/KID: Inception if its weights are cached, else an offline classifier.")
@click.option("--no-ends", is_flag=True, help="Skip training the c = 0 and c = 1 sibling runs.")
@DEVICE
@user_errors
def evaluate(run_dir, n, extractor, no_ends, device):
    """Quality per client (FID/KID) for c in {0, run, 1}, disclosure figures, client burden."""
    from .eval.evaluate import evaluate_run, format_tables
    from .rundir import read_run_config

    cfg = read_run_config(run_dir)
    result = evaluate_run(run_dir, n=n, extractor=extractor, ends=not no_ends, device=device or cfg.device,
                          log=lambda m: click.echo(m, err=True))  # fmt: skip
    click.echo(format_tables(result))
    click.echo(f"-> {Path(run_dir) / 'metrics' / 'quality.json'}, {Path(run_dir) / 'metrics' / 'burden.json'}", err=True)


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@click.option("--type", "kind", type=click.Choice(["reconstruction", "membership"]), required=True,
              help="Attack family; attacks see only the server's view (server_view/, its model, the public split).")
@click.option("--method", "methods", multiple=True, metavar="NAME", help="Method(s) to run (default: all that apply).")
@click.option("--target", default="server", show_default=True, metavar="server|client:K",
              help="membership: attack the server model, or client K's model as if it were released.")
@DEVICE
@user_errors
def attack(run_dir, kind, methods, target, device):
    """Attacks of an honest-but-curious server, scored against ground truth in eval/."""
    from .rundir import read_run_config

    cfg = read_run_config(run_dir)
    dev = device or cfg.device
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if kind == "reconstruction":
        if target != "server":
            raise UserError("--target applies to membership attacks only")
        from .eval.reconstruction import format_reconstruction, run_reconstruction

        result = run_reconstruction(run_dir, methods=list(methods) or None, device=dev, log=log)
        click.echo(format_reconstruction(result))
    else:
        from .eval.membership import format_membership, run_membership

        result = run_membership(run_dir, methods=list(methods) or None, target=target, device=dev, log=log)
        click.echo(format_membership(result))


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@user_errors
def privacy(run_dir):
    """Formal privacy of a run: GDP mu and epsilon of the server's view, client DP-SGD epsilon."""
    from .defenses.privacy import format_privacy, privacy_report

    click.echo(format_privacy(privacy_report(run_dir)))


@main.command()
@click.option("--config", "config", type=click.Path(), default=None, help="YAML config (default: embedded configs/default.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key by dotted path.")
@click.option("--out", type=click.Path(), default="runs/demo", show_default=True, help="Run directory; rerunning resumes.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def demo(config, overrides, out, device, quiet):
    """The main job: train on the embedded default data, then sample every client."""
    from .sampling import sample_run

    cfg = _load_cfg(config, overrides, device)
    run_dir = _train(cfg, out, quiet)
    info = sample_run(run_dir, device=cfg.device)
    click.echo(f"samples of {info['clients']} clients: {run_dir / 'samples' / 'grid.png'} (one band of rows per client)", err=True)
    click.echo(str(run_dir))


if __name__ == "__main__":  # pragma: no cover
    main()
