"""``collafuse-privacy audit``: canaries, the ordinary pipeline, and an empirical epsilon beside
the formal one (Jagielski et al. 2020; Nasr et al. 2021, 2023; Steinke, Nasr, Jagielski 2023).

The game. ``m`` canary slots are added to the clients' member sets (slot ``i`` to client
``i mod N``), each decided by an independent fair coin, and the run trains as usual:

* ``--target server`` (the server's view; its formal number is the release bound of
  ``metrics/privacy.json``): **replace-one**, the adjacency of that bound. Slot ``i`` holds a canary
  ``x_i`` or its partner ``x'_i``, chosen by the coin. Worst-case canaries (default) are at the
  largest L2 distance the pixel domain allows: ``x_i`` a random image of pixels +-1 and
  ``x'_i = -x_i``, ``||x - x'|| = 2 sqrt(d)``, the sensitivity the bound assumes; so the formal
  ``mu`` of a slot is the run's ``mu``, no adaptation needed. In-distribution canaries: two of the
  clients' held-out images per slot (the formal ``mu`` at their actual distance is then smaller,
  ``canary_formal_mu``).
* ``--target client:K`` (client ``K``'s released model under DP-SGD; its formal number is Opacus'
  epsilon): **add/remove**, Opacus' adjacency. Slot ``i`` holds ``x_i`` in client ``K``'s member set
  or not.

The attacks. Every membership method that sees only the server's view (``view-lrt``,
``view-composed``, ``loss`` ...) scores each slot: ``score(x) - score(x')`` (replace-one) or
``score(x)`` (add/remove). For the view the audit adds the **auditor's test** ``known-release``:
the Neyman-Pearson statistic of the slot's own releases, found through the ground truth's image ids
of the recorded rows, ``sum_j [log N(h_j; sqrt(a) x, (1-a) I) - log N(h_j; sqrt(a) x', (1-a) I)]``
(one term per distinct release). It is exactly the adversary the formal bound assumes (it knows
which releases are the candidate's), so its bound audits the implementation against its accounting:
a pipeline that sends more than it accounts for (less noise, ``eps`` beside ``h``, ...) pushes it
above the formal number. A real server has no such links and must find a canary's releases among
thousands: the view-only methods show what that costs.

The bounds (:mod:`.audit_stats`). Slots are split into a calibration half, where the threshold and
the best method are chosen, and an evaluation half, where the rates are counted. Each number names
its route:

* ``known-release`` scores each slot from its own releases only: the slots are independent trials,
  and the Clopper-Pearson routes hold: an ``epsilon`` bound (``(eps, delta)`` route) and, for a GDP
  claim, a ``mu`` bound (GDP route). The ``mu`` bound rules out GDP claims below it; it is not an
  epsilon and is never reported as one.
* The view-only methods and ``loss`` score every slot from one view or one model trained on all
  canaries: the trials are dependent, Clopper-Pearson does not apply, and Steinke et al.'s one-run
  bound (valid for dependent scores) is their epsilon.

For a GDP claim (the view) the headline is ``mu >= mu_lb`` against the formal ``mu``; for an
``(eps, delta)`` claim (Opacus) the best epsilon bound against Opacus' epsilon. The check fails
when a lower bound exceeds its formal number: with probability at most ``alpha`` for a correct
pipeline (for each of the two numbers).

Where each part lives: this module runs the audit (checks its input, trains the twin with its
canaries, writes ``metrics/audit.json``) and prints it; :mod:`.canaries` makes, stores and inserts
the canaries; :mod:`.audit_score` scores a trained audit run; :mod:`.audit_stats` holds the bounds.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from collafuse_privacy.attacks.base import check_family_options
from collafuse_privacy.attacks.membership import FAMILY
from collafuse_privacy.config import Config
from collafuse_privacy.errors import UserError
from collafuse_privacy.numbers import fmt
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.targets import parse_target, target_name
from collafuse_privacy.run.layout import CHECKPOINTS, CONFIG, audit_twin
from collafuse_privacy.run.schemas import AuditReport

from . import audit_stats as st
from .audit_score import (CLIENT_METHODS, KNOWN_RELEASE, VIEW_METHODS, attack_scores, known_release_scores,  # noqa: F401
                          method_bounds, score_audit)  # fmt: skip
from .canaries import (CANARY_KINDS, LABEL_ALT, LABEL_X, SERVER, Canaries, canaries_path, insert,  # noqa: F401
                       make_canaries, with_canaries)  # fmt: skip
from collafuse_privacy.client_secrets import mix
from collafuse_privacy.resolve import resolve, resolve_cut
from collafuse_privacy.resources import check_canary_memory
from collafuse_privacy.lock import locked
from collafuse_privacy.party import resolve_device
from collafuse_privacy.training import Session, Trainer

DEFAULT_CANARIES = 1000


def audit_dir(run_dir, target: str = SERVER) -> Path:
    """Where the audit stage of a run (a sweep cell) trains its twin with canaries."""
    return Path(run_dir) / audit_twin(parse_audit_target(target))



def audit_resolved(cfg: Config, run_dir: Path, m: int, kind: str, target: str, secrets=None):
    """The resolved config of the audit run in ``run_dir``: the ordinary one, with the canaries
    (made once, then read back from ``audit/canaries.safetensors``) inserted."""
    base = resolve(cfg, run_dir, secrets)
    check_canary_memory(base.cfg, m, base.data.shape)  # before the canaries are made
    path = canaries_path(run_dir)
    if path.is_file():
        can = Canaries.load(path)
        want_game = "replace-one" if target == SERVER else "add/remove"
        if len(can) != m or can.kind != kind or can.game != want_game:
            raise UserError(f"{run_dir} is an audit with {len(can)} {can.kind} canaries ({can.game}); this asks for "
                            f"{m} {kind} ({want_game}): choose another --out")  # fmt: skip
    else:
        can = make_canaries(base.data, base.splits, m, kind, target, mix("audit canaries", base.secrets.root))
    data, splits = insert(base.data, base.splits, can)
    choice = base.cut_choice
    cfg2 = base.cfg
    if cfg.protocol.target_epsilon is not None:  # more members: the releases per image may change
        cfg2, choice = resolve_cut(base.cfg, data, splits, run_dir)
    return dataclasses.replace(base, cfg=cfg2, data=data, splits=splits, cut_choice=choice), can



def run_audit(cfg: Config, run_dir, *, canaries: int = DEFAULT_CANARIES, kind: str = "worst-case",
              target: str = SERVER, methods: Optional[Sequence[str]] = None, options: Optional[dict] = None,
              one_run: bool = False, alpha: float = 0.05, device: str = "cpu", quiet: bool = True,
              log: Callable[[str], None] = print, secrets=None) -> AuditReport:  # fmt: skip
    """Train the audit run in ``run_dir`` (or resume it), attack its canaries, write ``metrics/audit.json``.

    ``secrets``: the clients' secrets (a sweep cell's, so its twin has the same split); default new ones.
    """
    run_dir = Path(run_dir)
    target = parse_audit_target(target)
    if not 0 < alpha < 1:
        raise UserError(f"alpha must lie in (0, 1), got {alpha}")
    if target != SERVER and not cfg.defense.client_dp.enabled:
        raise UserError(f"--target {target}: the client audit needs DP-SGD clients (defense.client_dp.enabled: true); "
                        "without them client models have no formal epsilon to audit")  # fmt: skip
    check_audit_methods(methods, options, target)  # every input checked before the twin trains
    if (run_dir / CONFIG).is_file() and (run_dir / CHECKPOINTS).is_dir() and not canaries_path(run_dir).is_file():
        raise UserError(f"--out {run_dir} holds an ordinary run, not an audit (it has no audit/canaries.safetensors): "
                        "choose another --out")  # fmt: skip
    t0 = time.perf_counter()
    with locked(run_dir):
        resolved, can = audit_resolved(cfg, run_dir, canaries, kind, target, secrets)
        trainer = Trainer(Session(resolved, run_dir, resolve_device(device), quiet=quiet))
        if not canaries_path(run_dir).is_file():
            can.save(canaries_path(run_dir))
        if trainer.step < resolved.cfg.train.steps:
            log(f"audit: training with {len(can)} {kind} canaries ({can.game}) in {run_dir}")
        trainer.train()
        report = score_audit(run_dir, can, methods=methods, options=options, one_run=one_run, alpha=alpha,
                             device=str(trainer.device), target=target, seconds=time.perf_counter() - t0, log=log)  # fmt: skip
        RunDir(run_dir).write_metrics("audit", report)
    return report


def check_audit_methods(methods: Optional[Sequence[str]], options: Optional[dict], target: str = SERVER) -> dict:
    """The membership methods and options of an audit, checked (names, types, ranges) before it trains."""
    names = [n for n in (methods or []) if n != KNOWN_RELEASE]
    if methods is not None and not isinstance(methods, (list, tuple)):
        raise UserError(f"audit methods must be a list of names, got {methods!r}")
    FAMILY.resolve(names)
    return check_family_options(FAMILY, dict(options or {}), names)


def parse_audit_target(target: str) -> str:
    """The audit's target in its canonical spelling (``server`` or ``client:K``; :mod:`collafuse_privacy.targets`)."""
    return target_name(*parse_target(str(target).strip(), "audit target"))



def format_audit(r: AuditReport) -> str:
    """The audit as text (the CLI's output)."""
    head = f"  formal epsilon {fmt(r.formal_epsilon, '.4g')}" + (f", mu {fmt(r.formal_mu, '.4g')}" if r.formal_mu is not None else "")
    head += f"; epsilon >= {fmt(r.epsilon_lb, '.4g')} ({r.epsilon_route or 'no route'}, {r.epsilon_method or 'no method'})"
    if r.mu_lb is not None:
        head += f"; mu >= {fmt(r.mu_lb, '.4g')} (GDP route, {r.mu_method})"
    head += (f"; ratio of {r.ratio_of} {r.ratio:.2f}" if r.ratio is not None else "")
    head += f"; {r.canaries} canaries certify at most epsilon {fmt(r.max_certifiable_epsilon, '.3g')}"
    lines = [f"audit of the {'server view' if r.target == SERVER else r.target.replace(':', ' ') + ' model'}: "
             f"{r.canaries} {r.canary_kind} canaries, {r.game}, delta={r.delta:g}, claim {r.claim}", head,
             f"  {'method':16} {'sees':8} {'trials':11} {'AUC':>6} {'eps (CP)':>9} {'mu (GDP)':>9} {'one-run':>8}"]  # fmt: skip
    for n, m in r.methods.items():
        if m.reason:
            lines.append(f"  {n:16} not applicable: {m.reason}")
            continue
        mark = "  <- headline (chosen on the calibration half)" if n == r.best else (
            "  <- epsilon (chosen on the calibration half)" if n == r.epsilon_method else "")
        lines.append(f"  {n:16} {'auditor' if m.sees.startswith('auditor') else 'view':8} "
                     f"{'independent' if m.independent else 'dependent':11} {fmt(m.auc, '.3f'):>6} "
                     f"{fmt(m.epsilon.value if m.epsilon else None, '.3g'):>9} {fmt(m.mu.value if m.mu else None, '.3g'):>9} "
                     f"{fmt(m.one_run.epsilon if m.one_run else None, '.3g'):>8}" + mark)  # fmt: skip
    for x in r.strata:
        lines.append(f"  released {x.releases}x: {x.slots} slots, mu >= {fmt(x.mu_lb, '.3g')} (known-release, confidence "
                     f"1 - {x.alpha:.3g}) against their formal mu {x.formal_mu:.4g}")  # fmt: skip
    u = r.unlinked
    if u is not None:
        lines.append(f"  unlinked claim (formal epsilon {fmt(u.formal_epsilon, '.4g')}, view-only attacks, one-run): "
                     + (", ".join(f"{n} >= {b:.3g}" for n, b in u.bounds.items()) + "; " if u.bounds else "")
                     + u.message)  # fmt: skip
    lines.append(f"  check: {r.message}")
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def gaussian_release_audit(mu: float, m: int, d: int = 64, seed: int = 0, alpha: float = 0.05,
                           delta: float = 1e-5, bound=None) -> tuple[float, float]:  # fmt: skip
    """The release mechanism alone, audited (no training): ``m`` worst-case canary slots in ``d``
    pixels, each released once through ``cut-image``'s hand-over at the level whose formal ``mu`` is
    ``mu``, scored by the auditor's known-release statistic (independent slots). Returns ``(mu lower
    bound, Clopper-Pearson epsilon lower bound)``. ``bound(scores, coins, cal, ev, kind, delta, alpha)``
    replaces :func:`audit_stats.threshold_bound` (a test gives a miscalibrated one to show its power)."""
    bound = bound or st.threshold_bound
    D = 2 * math.sqrt(d)
    a = (mu / D) ** 2 / (1 + (mu / D) ** 2)  # sqrt(a / (1 - a)) D = mu
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (m, d), generator=g).double() * 2 - 1
    coin = torch.rand(m, generator=g) < 0.5
    x_in = torch.where(coin.unsqueeze(1), x, -x)
    h = math.sqrt(a) * x_in + math.sqrt(1 - a) * torch.randn(m, d, generator=g, dtype=torch.float64)
    s = ((math.sqrt(a) / (1 - a)) * (h * (2 * x)).sum(1)).numpy()  # log N(h; sqrt(a) x) - log N(h; -sqrt(a) x)
    cal, ev = st.halves(m, seed)
    return (bound(s, coin.numpy(), cal, ev, "mu", delta, alpha).value,
            bound(s, coin.numpy(), cal, ev, "eps", delta, alpha).value)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `collafuse-privacy audit`")
