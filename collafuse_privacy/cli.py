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


MAX_ERROR_CHARS = 1000  # an error echoes what the user gave; a huge value is cut, not printed whole


def cap_message(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(text).split("\n"))
    return text if len(text) <= limit else text[: limit - 40] + f" ... ({len(text) - limit + 40} characters cut)"


class CliError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {cap_message(self.format_message())}", err=True)


def os_error_line(exc: OSError) -> str:
    """``OSError`` as one line naming the path: permission denied, disk full, not a directory."""
    what = exc.strerror or str(exc)
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p]
    return f"{what}: {' -> '.join(str(p) for p in paths)}" if paths else what


def user_errors(fn):
    """Turn UserError, an OS error (permissions, a full disk) and an interrupt into one line;
    keep tracebacks for real bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(os_error_line(exc)) from None
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
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="torch threads of this command (default: the machine's cores; `sweep --jobs J` gives each "
                   "cell N // J). Set explicitly, so no command oversubscribes the CPU.")
def main(threads) -> None:
    """CollaFuse split diffusion, and what an honest-but-curious server learns."""
    set_threads(threads)


def set_threads(threads=None) -> int:
    """Set torch's intra-op threads (``threads``, at most the cores this process may use, else those
    cores); returns them. More threads than cores only oversubscribe (and 100000 exhaust memory)."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is not None and int(threads) > cores:
        click.echo(f"note: --threads {threads} is more than the {cores} cores this process may use; using {cores}",
                   err=True)  # fmt: skip
        threads = cores
    if threads is None:
        threads = cores
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def _load_cfg(config, overrides, device):
    from .config import load_config

    if device is not None:
        overrides = list(overrides) + [f"device={device}"]
    return load_config(config, overrides)


def _train(cfg, out, quiet):
    from .party import resolve_device
    from .resolve import resolve
    from .rundir import default_run_dir
    from .training import Trainer

    from .lock import locked

    from .training import refuse_audit_dir

    if out:
        refuse_audit_dir(out)
    resolved = resolve(cfg, Path(out) if out else None)  # protocol.target_epsilon -> the cut, before naming the run
    run_dir = Path(out) if out else default_run_dir(resolved.cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder")
    with locked(run_dir):
        trainer = Trainer(resolved, run_dir, resolve_device(cfg.device), quiet=quiet)
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


CONFIG = click.option("--config", "config", type=click.Path(), default=None,
                      help="YAML config (default: embedded configs/default.yaml).")
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                   help="Override a config key by dotted path, e.g. protocol.cut_ratio=0.3 "
                        "(`collafuse-privacy config` lists every key).")


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
    cfg = _load_cfg(config, overrides, device)
    run_dir = _train(cfg, out, quiet)
    click.echo(str(run_dir))


@main.group()
def flower() -> None:
    """CollaFuse on Flower (optional extra: pip install -e '.[flower]').

    `flower run` wraps a localhost deployment (a SuperLink and one SuperNode per client) or the
    simulation engine; `flower prepare` and `flower collect` are its first and last steps, for
    SuperNodes you start yourself (README: "Flower").
    """


RUN_OUT = click.option("--out", type=click.Path(), default=None,
                       help="Run directory (default: runs/<data>-<protocol>-c<ratio>-<hash>). Rerunning resumes.")
RPM = click.option("--rounds-per-message", type=click.IntRange(min=1), default=None,
                   help="Training rounds a client runs per Flower message (default: train.checkpoint_every).")


def _flower_out(cfg, out):
    from .resolve import resolve
    from .rundir import default_run_dir

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
    from .flower.launch import require_flower, run_flower
    from .party import resolve_device

    require_flower()
    cfg = _load_cfg(config, overrides, device)
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
    from .flower.parties import prepare

    cfg = _load_cfg(config, overrides, None)
    run_dir = _flower_out(cfg, out)
    plan = prepare(cfg, run_dir, rounds_per_message=rounds_per_message)
    click.echo(f"prepared {run_dir} for {plan.clients} clients ({plan.rounds_per_message} rounds per message)", err=True)
    click.echo(str(run_dir))


@flower.command("collect")
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A finished Flower run.")
@user_errors
def flower_collect(run_dir):
    """Join the parties' records of a finished Flower run into the standard run layout."""
    from .flower.parties import collect

    s = collect(run_dir)
    click.echo(f"collected {run_dir}: {s['steps']} rounds" + (", samples" if s["sampled"] else ""), err=True)


@main.command("config")
@CONFIG
@SET
@user_errors
def config_cmd(config, overrides):
    """Print the fully resolved config: every key, its value, and its default where they differ."""
    from .config import describe

    cfg = _load_cfg(config, overrides, None)
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
    from .rundir import RunDir
    from .stages import STAGES

    cfg = RunDir(run_dir).config()
    info = STAGES.get("sample")(Path(run_dir), cfg, device=device or cfg.device, n=n, seed=seed)
    click.echo(
        f"{info['n']} samples for each of {info['clients']} clients (checkpoint step {info['step']}, t_c = {info['t_c']}) "
        f"-> {Path(run_dir) / 'samples'}",
        err=True,
    )
    if pretrained_dir:
        from .sampling import export_pipeline

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
    from .eval.evaluate import format_tables
    from .rundir import RunDir
    from .stages import STAGES

    cfg = RunDir(run_dir).config()
    result = STAGES.get("evaluate")(Path(run_dir), cfg, n=n, extractor=extractor, ends=not no_ends,
                                    device=device or cfg.device, log=lambda m: click.echo(m, err=True))  # fmt: skip
    click.echo(format_tables(result))
    click.echo(f"-> {Path(run_dir) / 'metrics' / 'quality.json'}, {Path(run_dir) / 'metrics' / 'burden.json'}", err=True)


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
    from .attacks import parse_options
    from .rundir import RunDir
    from .stages import STAGES

    cfg = RunDir(run_dir).config()
    dev = device or cfg.device
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if kind == "reconstruction" and target != "server":
        raise UserError("--target applies to membership attacks only")
    from .attacks.membership import FAMILY as MEMBERSHIP
    from .attacks.reconstruction import FAMILY as RECONSTRUCTION

    family = RECONSTRUCTION if kind == "reconstruction" else MEMBERSHIP
    family.resolve(methods)  # unknown names, and every option's type and range, before any work
    opts = parse_options(options, family)
    run = STAGES.get(kind)
    if kind == "reconstruction":
        from .eval.reconstruction import format_reconstruction

        result = run(Path(run_dir), cfg, methods=list(methods) or None, options=opts, device=dev, log=log)
        click.echo(format_reconstruction(result))
    else:
        from .eval.membership import format_membership

        results = run(Path(run_dir), cfg, methods=list(methods) or None, targets=[target], options=opts, device=dev,
                      log=log)  # fmt: skip
        click.echo(format_membership(results[target], target))


@main.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A trained run directory.")
@user_errors
def privacy(run_dir):
    """Formal privacy of a run: GDP mu and epsilon of the server's view, client DP-SGD epsilon."""
    from .defenses.privacy import format_privacy, privacy_report

    click.echo(format_privacy(privacy_report(run_dir)))


def _embedded(name: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("collafuse_privacy.configs").joinpath(name)))


def _sweep_and_report(sweep_file, out, jobs, device, quiet, report: bool, seeds=None, executor="local", ray=None):
    from .sweep import load_sweep, run_sweep

    sw = load_sweep(sweep_file, out, device=device, seeds=seeds)
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if jobs is None:  # demo: one cell per core, one thread each (faster than two threads per cell here)
        import os

        jobs = max(1, min(os.cpu_count() or 1, len(sw.cells)))
    index = run_sweep(sw, jobs=jobs, log=log, quiet=quiet, executor=executor, ray=ray)
    if report:
        from .eval.report import write_report

        res = write_report([out], log=log)
        return index, res
    return index, None


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
    from .attacks import parse_options
    from .client_secrets import read_secrets
    from .eval.audit import DEFAULT_CANARIES, audit_dir, format_audit, run_audit
    from .rundir import RunDir

    if run_dir is None and out is None:
        raise UserError("give --run RUN (audit a run's config), or --out DIR (with --config/--set; default: the "
                        "embedded default config)")
    if run_dir is not None and out is not None:
        raise UserError("--run and --out are alternatives: --run RUN audits in RUN/audit-<target>/, --out DIR audits "
                        "the config of --config/--set in DIR")  # fmt: skip
    from .attacks.membership import FAMILY as MEMBERSHIP
    from .eval.audit import check_audit_methods, parse_audit_target

    parse_audit_target(target)
    opts = parse_options(options, MEMBERSHIP)
    check_audit_methods(list(methods) or None, opts, target)  # before the twin trains
    secrets = None
    if run_dir is not None:
        if config is not None or overrides:
            raise UserError("--run takes the run's own config: drop --config/--set")
        cfg = RunDir(run_dir).config()
        if device is not None:
            from .config import with_overrides

            cfg = with_overrides(cfg, [f"device={device}"])
        out = out or audit_dir(run_dir, target)
        secrets = read_secrets(run_dir)
    else:
        cfg = _load_cfg(config, overrides, device)
    report = run_audit(cfg, Path(out), canaries=DEFAULT_CANARIES if canaries is None else canaries, kind=kind,
                       target=target, methods=list(methods) or None, options=opts, one_run=one_run, alpha=alpha,
                       device=cfg.device, quiet=quiet, log=lambda m: click.echo(m, err=True), secrets=secrets)  # fmt: skip
    click.echo(format_audit(report))
    click.echo(str(Path(out) / "metrics" / "audit.json"))
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
    from .eval.audit_dpsgd import audit_dpsgd as run_audit_dpsgd, format_white_box, tiny_clients

    r = run_audit_dpsgd(tiny_clients(noise_multiplier, sample_rate, seed=seed, block=canaries), steps=steps,
                        runs=runs, canaries=canaries, canary_norm=canary_norm, delta=delta, alpha=alpha,
                        seed=seed)  # fmt: skip
    click.echo(format_white_box(r))
    if not r.passed:
        sys.exit(1)


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
    click.echo(str(Path(out) / "sweep.json"))
    if failed:
        sys.exit(1)


@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(), default=None, help="Where report.md/.html and figures/ go (default: the first DIR).")
@click.option("--no-screenshot", is_flag=True, help="Do not render the report's first screen with headless Chromium.")
@user_errors
def report(dirs, out, no_screenshot):
    """Report from run and sweep directories: trade-off plot, tables, ROC, reconstructions, samples."""
    from .eval.report import write_report

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
    index, res = _sweep_and_report(sweep_file or _embedded("sweep-default.yaml"), Path(out), jobs, device, quiet, report=True)
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {res['report_html']}", err=True)
    click.echo(res["report_html"])


if __name__ == "__main__":  # pragma: no cover
    main()
