"""What a membership evaluation reports beside the raw scores (:mod:`.membership` runs it): the
formal GDP bound of the server's view (``gdp_section``: the worst case, and a heuristic at the
members' actual distances), the strongest method chosen on a calibration half
(``best_method``), the log-log ROC figure with the bound drawn in, and the text table
(``format_membership``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from collafuse_privacy.defenses.accounting import gdp_tpr, sensitivity
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import save_figure
from collafuse_privacy.linalg import nearest
from collafuse_privacy.numbers import fmt_interval, num
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.schemas import BestMethod, GDPSection, MembershipResult
from collafuse_privacy.view import ServerView

from .harness import pyplot
from .roc import auc as roc_auc
from .roc import calibration_halves, resolvable, tpr_at_fpr
from .stats import bootstrap


def nearest_nonmember_distance(members: torch.Tensor, pool: torch.Tensor) -> np.ndarray:
    """L2 distance from each member image to its nearest image in ``pool`` (both [*, C, H, W])."""
    return nearest(members.flatten(1), pool.flatten(1))[0].numpy()


def trained_releases(run_dir: str | Path) -> Optional[int]:
    """Releases per image counted during training (``metrics/privacy.json``), if recorded there."""
    try:
        report = RunDir(run_dir).metrics("privacy")
    except UserError:
        return None
    return None if report is None else int(report.view.releases_per_image)


def gdp_section(view: ServerView, ids_recorded: np.ndarray, member_dist: np.ndarray,
                releases_trained: Optional[int] = None) -> GDPSection:  # fmt: skip
    """GDP mu (worst case and actual distances) and the bound's TPR at 1% / 0.1% FPR.

    Releases per image: 1 with fixed noise; else the count made during training when known
    (the recorded rows stop at ``record.max_items`` and would understate it), else the
    recorded maximum, marked as a lower bound.
    """
    recorded = int(np.bincount(ids_recorded).max()) if len(ids_recorded) else 0
    if view.meta.fixed_noise:
        releases, how = 1, "fixed_noise: every re-send is the same h"
    elif releases_trained is not None:
        releases, how = max(releases_trained, recorded), "max releases of any one image, counted in training"
    elif recorded:
        releases, how = recorded, "max recorded releases of any one image (a lower bound if recording was capped)"
    else:
        releases, how = 0, "no recorded releases"
    shape = view.image_shape
    dmax = float(np.max(member_dist)) if len(member_dist) and releases else None
    dmed = float(np.median(member_dist)) if len(member_dist) and releases else None
    mu = view.protocol.release_mu
    if releases == 0:
        mus = {"worst": 0.0, "actual": 0.0, "actual_median": 0.0}
    else:
        mus = {"worst": mu(shape, releases),
               "actual": mu(shape, releases, dmax) if dmax is not None else float("nan"),
               "actual_median": mu(shape, releases, dmed) if dmed is not None else float("nan")}  # fmt: skip
    bound = {(k, f): float(gdp_tpr(f, mus[k])) for k in ("worst", "actual") for f in (0.01, 0.001)}
    return GDPSection(
        releases_per_image=releases, releases_counted=how, mu_worst=mus["worst"], mu_actual=mus["actual"],
        mu_actual_median=mus["actual_median"], tpr_bound_at_1pct_fpr=bound["worst", 0.01],
        tpr_bound_at_01pct_fpr=bound["worst", 0.001], tpr_bound_at_1pct_fpr_actual=bound["actual", 0.01],
        tpr_bound_at_01pct_fpr_actual=bound["actual", 0.001],
        mu_actual_uses="a heuristic, not a bound: the max over sampled members of the distance to the nearest "
                       "public/held-out image, in place of the worst-case sensitivity 2 sqrt(d)",
        sensitivity_worst=sensitivity(shape) if releases else None, distance_median=dmed, distance_max=dmax)


def best_method(scores: dict[str, np.ndarray], labels: np.ndarray, n_boot: int, seed: int) -> Optional[BestMethod]:
    """The strongest method, chosen on a calibration half of the candidates by TPR at 1% FPR (AUC
    where that half cannot resolve 1%), and scored on the other half: a best-of over several
    methods chosen on the scored data itself would be biased upwards."""
    if not scores:
        return None
    cal, ev = calibration_halves(labels, seed)
    by_tpr = resolvable(0.01, int((labels[cal] == 0).sum()))
    key = (lambda s: (tpr_at_fpr(s[cal], labels[cal], 0.01), roc_auc(s[cal], labels[cal]))) if by_tpr else \
        (lambda s: (roc_auc(s[cal], labels[cal]),))  # fmt: skip
    name = max(scores, key=lambda n: key(scores[n]))
    s, y = scores[name][ev], labels[ev]
    kw = dict(n_boot=n_boot, seed=seed, strata=y)
    tpr = bootstrap(lambda a, b: tpr_at_fpr(a, b, 0.01), s, y, **kw) if resolvable(0.01, int((y == 0).sum())) else None
    return BestMethod(method=name, selected_by=f"{'TPR at 1% FPR' if by_tpr else 'AUC'} on a calibration half "
                      f"({len(cal)} candidates), scored on the other half ({len(ev)})",
                      auc=bootstrap(roc_auc, s, y, **kw), tpr_at_1pct_fpr=tpr,
                      note="" if tpr is not None else "TPR at 1% FPR is not resolvable on the held-out half")  # fmt: skip


def plot_roc(path: Path, curves: dict, result: MembershipResult, target: str, n_non: int) -> None:
    """The log-log ROC of every method (``curves``: ``{name: (fpr, tpr, auc)}``), chance, and the GDP
    bound (worst case) and its heuristic at the actual distance, written to ``path``."""
    plt = pyplot()
    lo = 1.0 / max(2 * n_non, 2)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    grid = np.logspace(math.log10(lo), 0, 200)
    ax.plot(grid, grid, ":", color="grey", lw=1, label="chance")
    for name, (fpr, tpr, a) in curves.items():
        keep = fpr > 0
        ax.step(fpr[keep], tpr[keep], where="post", lw=1.5, label=f"{name} (AUC {a:.3f})")
    gdp = result.gdp
    if gdp is not None:
        for mu, style, lab in ((gdp.mu_worst, "--", "GDP bound (worst case)"),
                               (gdp.mu_actual, "-.", "GDP at the actual max distance: heuristic, not a bound")):
            if math.isfinite(mu):
                ax.plot(grid, gdp_tpr(grid, mu), style, color="black", lw=1, label=f"{lab} (mu={mu:.3g})")
            elif mu == float("inf"):
                ax.plot(grid, np.ones_like(grid), style, color="black", lw=1, label=f"{lab} (mu=inf)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1)
    ax.set_ylim(lo, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"membership [{target}]: {result.protocol}, c={result.cut_ratio:g}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def format_membership(result: MembershipResult, target: str) -> str:
    """A plain-text table of one target's results."""
    f = lambda iv, why=None: fmt_interval(iv, ".3f") if iv is not None else ("not resolvable" if why else "-")  # noqa: E731
    lines = [f"membership inference [{target}]: {result.protocol}, c = {result.cut_ratio:g} "
             f"(t_c = {result.t_c}), {result.n_members} members vs {result.n_nonmembers} held-out"]  # fmt: skip
    head = f"{'method':<10} {'AUC':<24} {'bal. acc. (held-out)':<24} {'TPR@1%FPR':<24} {'TPR@0.1%FPR':<24} {'s':>6}"
    lines += [head, "-" * len(head)]
    for name, m in result.methods.items():
        if not m.applicable:
            lines.append(f"{name:<10} not applicable: {m.reason}")
            continue
        u = m.unresolved

        def tpr(iv, key):
            cp = (m.unresolved_intervals or {}).get(key) or {}
            if iv is None and cp.get("tpr_interval"):
                lo, hi = cp["tpr_interval"]
                return f"n.r.; CP [{lo:.3f}, {hi:.3f}]"  # no point estimate: the Clopper-Pearson interval only
            return f(iv, u.get(key))

        lines.append(f"{name:<10} {f(m.auc):<24} {f(m.balanced_accuracy, u.get('balanced_accuracy')):<24} "
                     f"{tpr(m.tpr_at_1pct_fpr, 'tpr_at_1pct_fpr'):<24} "
                     f"{tpr(m.tpr_at_01pct_fpr, 'tpr_at_0.1pct_fpr'):<24} {m.seconds:>6.1f}")  # fmt: skip
    notes = sorted({why for m in result.methods.values() for why in m.unresolved.values()})
    lines += [f"  {why}" for why in notes]
    if any(m.unresolved_intervals for m in result.methods.values()):
        lines.append("  n.r.; CP [lo, hi]: no point estimate; 95% Clopper-Pearson interval of the TPR at the threshold "
                     "that admits at most floor(FPR x n) non-members (unresolved_intervals in membership.json)")  # fmt: skip
    if result.best is not None:
        b = result.best
        lines.append(f"strongest: {b.method} (chosen by {b.selected_by}): AUC {f(b.auc)}, TPR@1%FPR "
                     f"{f(b.tpr_at_1pct_fpr, b.note)}")  # fmt: skip
    gdp = result.gdp
    if gdp is not None:
        lines.append(f"GDP bound: mu worst {num(gdp.mu_worst):.4g} (releases/image {gdp.releases_per_image}); "
                     f"TPR@1%FPR <= {gdp.tpr_bound_at_1pct_fpr:.4g}; heuristic mu at the actual max distance "
                     f"{num(gdp.mu_actual):.4g}")  # fmt: skip
    if result.record is not None and result.record.not_recorded:
        r = result.record
        lines.append(f"the server received {r.received} rows; {r.not_recorded} were not recorded "
                     f"(record.max_items = {r.max_items}) and no attack saw them")  # fmt: skip
    lines.append(f"-> {result.scores}, {result.figure}")
    return "\n".join(lines)
