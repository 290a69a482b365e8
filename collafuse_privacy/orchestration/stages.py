"""The stages of a run, one registry shared by the CLI and sweeps (``orchestration/``).

Each stage is a plain function ``run(run_dir, cfg, *, device, log, quiet, **options)``
registered with the options a sweep file may give it (``stages: {NAME: {OPTION: ...}}``), each
typed and ranged (:class:`~collafuse_privacy.options.Opt`, checked when the sweep file loads);
the CLI's commands call the same functions. Registration order is the order a sweep
runs them in: train, sample, evaluate, privacy, reconstruction, membership, audit (on request:
it trains a twin of the cell with canaries, ``eval/audit.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..client_secrets import read_secrets
from ..config import Config
from ..options import SEED_MAX, Opt
from ..registry import Registry
from ..sampling import sample_run
from ..training import train
from ..eval.evaluate import evaluate_run
from ..defenses.privacy import privacy_report
from ..eval.reconstruction import DEFAULT_CAP as RECONSTRUCTION_CAP, run_reconstruction
from ..eval.membership import DEFAULT_CAP as MEMBERSHIP_CAP, run_membership
from ..eval.audit import DEFAULT_CANARIES, audit_dir, run_audit

STAGES: Registry = Registry("stage")

METHODS = Opt(list, item=str, nullable=True, help="attack methods (default: all that apply)")
METHOD_OPTIONS = Opt("mapping", nullable=True, help="METHOD: {OPTION: VALUE}, checked by the method's own types")
CAP = Opt(int, 1, nullable=True, help="candidates per client")


def stage(name: str, options: dict[str, Opt] | None = None, on_request: bool = False) -> Callable:
    """Register ``fn`` as stage ``name`` accepting ``options`` (from sweep files; name -> :class:`Opt`);
    ``on_request``: not part of a sweep's default stages (a sweep file names it, for all cells or in an
    include entry)."""

    def deco(fn):
        fn.options = dict(options or {})
        fn.on_request = bool(on_request)
        return STAGES.register(name)(fn)

    return deco


@stage("train")
def train_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True, secrets=None):
    return train(cfg, run_dir, device=device, quiet=quiet, secrets=secrets)


@stage("sample", options={"n": Opt(int, 1, nullable=True), "seed": Opt(int, 0, SEED_MAX, nullable=True)})
def sample_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True, n=None, seed=None):
    return sample_run(run_dir, n=n, device=device, seed=seed)


@stage("evaluate", options={"n": Opt(int, 2, nullable=True), "ends": Opt(bool),
                            "extractor": Opt(str, choices=("auto", "inception", "classifier"))})
def evaluate_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True, n=None,
                   extractor: str = "auto", ends: bool = False):  # fmt: skip
    return evaluate_run(run_dir, n=n, extractor=extractor, ends=ends, device=device, log=log)


@stage("privacy")
def privacy_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True):
    return privacy_report(run_dir)


@stage("reconstruction", options={"methods": METHODS, "options": METHOD_OPTIONS, "cap": CAP})
def reconstruction_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True, methods=None,
                         options=None, cap=None):  # fmt: skip
    return run_reconstruction(run_dir, methods=methods, device=device, log=log, options=options,
                              cap=RECONSTRUCTION_CAP if cap is None else cap)  # fmt: skip


@stage("membership", options={"methods": METHODS, "targets": Opt(list, item=str, nullable=True),
                              "options": METHOD_OPTIONS, "cap": CAP})
def membership_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True, methods=None,
                     targets=None, options=None, cap=None):  # fmt: skip
    return {t: run_membership(run_dir, methods=methods, target=t, device=device, log=log, options=options,
                              cap=MEMBERSHIP_CAP if cap is None else cap) for t in (targets or ["server"])}  # fmt: skip


@stage("audit", options={"canaries": Opt(int, 4, nullable=True), "kind": Opt(str, choices=("worst-case", "in-distribution")),
                         "target": Opt(str), "methods": METHODS, "options": METHOD_OPTIONS, "one_run": Opt(bool)},
       on_request=True)
def audit_stage(run_dir: Path, cfg: Config, *, device: str, log=print, quiet: bool = True, canaries=None,
                kind: str = "worst-case", target: str = "server", methods=None, options=None, one_run: bool = False,
                secrets=None):  # fmt: skip
    """A twin of the run with canaries in ``<run>/audit-<target>/``, audited (``metrics/audit.json`` there).
    Its clients' secrets: the run's (or, for a cell that only audits, the sweep's)."""
    canaries = DEFAULT_CANARIES if canaries is None else canaries  # 0 is refused, never replaced
    return run_audit(cfg, audit_dir(run_dir, target), canaries=canaries, kind=kind, target=target,
                     methods=methods, options=options, one_run=one_run, device=device, quiet=quiet, log=log,
                     secrets=read_secrets(run_dir) or secrets)  # fmt: skip
