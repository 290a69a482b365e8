"""``audit`` (canaries through the ordinary pipeline) and ``audit-dpsgd`` (white-box DP-SGD)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..attacks import parse_options
from ..attacks.membership import FAMILY as MEMBERSHIP
from ..client_secrets import read_secrets
from ..config import with_overrides
from ..errors import UserError
from ..eval.audit import (
    DEFAULT_CANARIES,
    audit_dir,
    check_audit_methods,
    format_audit,
    parse_audit_target,
    run_audit,
)
from ..eval.audit_dpsgd import audit_dpsgd as run_audit_dpsgd
from ..eval.audit_dpsgd import format_white_box, tiny_clients
from ..run.directory import RunDir
from ..run.layout import metrics_file
from .common import CONFIG, DEVICE, SET, load_cfg, main, user_errors


@main.command()
@CONFIG
@SET
@click.option("--run", "run_dir", type=click.Path(), default=None,
              help="Audit this run's config: the audit trains a twin with canaries in RUN/audit-<target>/.")
@click.option("--out", type=click.Path(), default=None, help="The audit run's directory (with --config). Rerunning resumes.")
@click.option("--canaries", type=click.IntRange(min=4), default=None, help="Canary slots (default 1000).")
@click.option("--kind", type=click.Choice(["worst-case", "in-distribution"]), default="worst-case", show_default=True,
              help="worst-case: random +-1 images and their negatives (the largest L2 distance); in-distribution: "
                   "pairs of the clients' held-out images.")
@click.option("--target", default="server", show_default=True, metavar="server|client:K",
              help="server: its view (replace-one, the release bound); client:K: client K's released model "
                   "(add/remove, Opacus' epsilon; needs DP-SGD clients).")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Membership method(s) on the canaries (default: view-lrt and view-composed for the server, loss "
                   "for a client); the server audit always adds the auditor's known-release test.")
@click.option("--option", "options", multiple=True, metavar="METHOD.KEY=VALUE", help="An option of one method.")
@click.option("--one-run", is_flag=True, help="Also the one-run bound of Steinke, Nasr, Jagielski 2023 for the known-release "
              "test (methods with dependent slot scores always get it, and only it).")
@click.option("--alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="1 - confidence of the lower bounds.")
@DEVICE
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def audit(config, overrides, run_dir, out, canaries, kind, target, methods, options, one_run, alpha, device, quiet):
    """Privacy audit: canaries in the clients' data, the ordinary pipeline, empirical lower bounds beside
    the formal numbers, each naming its route: mu (GDP route) for the view's GDP claim, epsilon from
    Clopper-Pearson (independent slot scores) or the one-run bound (dependent ones). Writes
    metrics/audit.json. Exit code 1 when a lower bound exceeds its formal number (the pipeline leaks
    more than its accounting says)."""
    if run_dir is None and out is None:
        raise UserError("give --run RUN (audit a run's config), or --out DIR (with --config/--set; default: the "
                        "embedded default config)")
    if run_dir is not None and out is not None:
        raise UserError("--run and --out are alternatives: --run RUN audits in RUN/audit-<target>/, --out DIR audits "
                        "the config of --config/--set in DIR")  # fmt: skip

    parse_audit_target(target)
    opts = parse_options(options, MEMBERSHIP)
    check_audit_methods(list(methods) or None, opts, target)  # before the twin trains
    secrets = None
    if run_dir is not None:
        if config is not None or overrides:
            raise UserError("--run takes the run's own config: drop --config/--set")
        cfg = RunDir(run_dir).config()
        if device is not None:
            cfg = with_overrides(cfg, [f"device={device}"])
        out = out or audit_dir(run_dir, target)
        secrets = read_secrets(run_dir)
    else:
        cfg = load_cfg(config, overrides, device)
    report = run_audit(cfg, Path(out), canaries=DEFAULT_CANARIES if canaries is None else canaries, kind=kind,
                       target=target, methods=list(methods) or None, options=opts, one_run=one_run, alpha=alpha,
                       device=cfg.device, quiet=quiet, log=lambda m: click.echo(m, err=True), secrets=secrets)  # fmt: skip
    click.echo(format_audit(report))
    click.echo(str(Path(out) / metrics_file("audit")))
    if report.check == "failed":
        sys.exit(1)


@main.command("audit-dpsgd")
@click.option("--noise-multiplier", type=click.FloatRange(min=0, min_open=True), default=0.8, show_default=True)
@click.option("--sample-rate", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Independent training runs of the tiny client (fresh model, data draws, noise, accountant).")
@click.option("--canaries", type=click.IntRange(min=4), default=2000, show_default=True,
              help="Gradient canaries per run (one coordinate each of the client's canary block, sized to fit).")
@click.option("--canary-norm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The canaries' gradient norm in units of the clipping norm 1 (default 1; above, clipping must cut it).")
@click.option("--delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=1e-5, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@user_errors
def audit_dpsgd(noise_multiplier, sample_rate, steps, runs, canaries, canary_norm, delta, alpha, seed):
    """White-box audit of the Opacus DP-SGD integration (Nasr et al. 2023; Steinke et al. 2023): gradient
    canaries in a parameter block no real gradient touches, through a tiny client's clipping, noise and
    sampling, every update observed; the Clopper-Pearson (headline), one-run and parametric epsilons beside
    Opacus' (add/remove). Exit code 1 when one exceeds it."""
    r = run_audit_dpsgd(tiny_clients(noise_multiplier, sample_rate, seed=seed, block=canaries), steps=steps,
                        runs=runs, canaries=canaries, canary_norm=canary_norm, delta=delta, alpha=alpha,
                        seed=seed)  # fmt: skip
    click.echo(format_white_box(r))
    if not r.passed:
        sys.exit(1)

