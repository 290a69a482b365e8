"""Commands on a trained run: ``config``, ``sample``, ``evaluate``, ``attack``, ``privacy``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..attacks import parse_options
from ..attacks.membership import FAMILY as MEMBERSHIP
from ..attacks.reconstruction import FAMILY as RECONSTRUCTION
from ..config import describe
from ..defenses.privacy import format_privacy, privacy_report
from ..errors import UserError
from ..eval.evaluate import format_tables
from ..eval.membership import format_membership
from ..eval.reconstruction import format_reconstruction
from ..run.directory import RunDir
from ..run.layout import SAMPLES, metrics_file
from ..sampling import export_pipeline
from ..orchestration.stages import STAGES
from .common import CONFIG, DEVICE, SET, load_cfg, main, user_errors


@main.command("config")
@CONFIG
@SET
@user_errors
def config_cmd(config, overrides):
    """Print the fully resolved config: every key, its value, and its default where they differ."""
    cfg = load_cfg(config, overrides, None)
    click.echo(describe(cfg))


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@click.option("--n", type=click.IntRange(min=1), default=None, help="Samples per client (default: the config's sample.n).")
@click.option("--seed", type=int, default=None, help="Sampling seed (default: the run's seed).")
@click.option("--save-pretrained", "pretrained_dir", type=click.Path(file_okay=False), default=None,
              help="Also save the trained system as a diffusers pipeline folder (CollaFusePipeline.from_pretrained).")
@DEVICE
@user_errors
def sample(run_dir, n, seed, device, pretrained_dir):
    """Collaborative sampling: server down to the hand-over image, client to x0."""
    cfg = RunDir(run_dir).config()
    info = STAGES.get("sample")(Path(run_dir), cfg, device=device or cfg.device, n=n, seed=seed)
    click.echo(
        f"{info['n']} samples for each of {info['clients']} clients (checkpoint step {info['step']}, t_c = {info['t_c']}) "
        f"-> {Path(run_dir) / SAMPLES}",
        err=True,
    )
    if pretrained_dir:
        click.echo(f"pipeline -> {export_pipeline(run_dir, pretrained_dir)}", err=True)
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
    cfg = RunDir(run_dir).config()
    result = STAGES.get("evaluate")(Path(run_dir), cfg, n=n, extractor=extractor, ends=not no_ends,
                                    device=device or cfg.device, log=lambda m: click.echo(m, err=True))  # fmt: skip
    click.echo(format_tables(result))
    click.echo(f"-> {Path(run_dir) / metrics_file('quality')}, {Path(run_dir) / metrics_file('burden')}", err=True)


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@click.option("--type", "kind", type=click.Choice(["reconstruction", "membership"]), required=True,
              help="Attack family; attacks see only the server's view (server_view/, its model, the public split).")
@click.option("--method", "methods", multiple=True, metavar="NAME", help="Method(s) to run (default: all that apply).")
@click.option("--target", default="server", show_default=True, metavar="server|client:K",
              help="membership: attack the server model, or client K's model as if it were released.")
@click.option("--option", "options", multiple=True, metavar="METHOD.KEY=VALUE",
              help="An option of one method, YAML-typed, e.g. learned.steps=300 or loss.n_noise=4.")
@DEVICE
@user_errors
def attack(run_dir, kind, methods, target, options, device):
    """Attacks of an honest-but-curious server, scored against ground truth in eval/."""
    cfg = RunDir(run_dir).config()
    dev = device or cfg.device
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if kind == "reconstruction" and target != "server":
        raise UserError("--target applies to membership attacks only")

    family = RECONSTRUCTION if kind == "reconstruction" else MEMBERSHIP
    family.resolve(methods)  # unknown names, and every option's type and range, before any work
    opts = parse_options(options, family)
    run = STAGES.get(kind)
    if kind == "reconstruction":
        result = run(Path(run_dir), cfg, methods=list(methods) or None, options=opts, device=dev, log=log)
        click.echo(format_reconstruction(result))
    else:
        results = run(Path(run_dir), cfg, methods=list(methods) or None, targets=[target], options=opts, device=dev,
                      log=log)  # fmt: skip
        click.echo(format_membership(results[target], target))


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@user_errors
def privacy(run_dir):
    """Formal privacy of a run: GDP mu and epsilon of the server's view, client DP-SGD epsilon."""
    click.echo(format_privacy(privacy_report(run_dir)))

