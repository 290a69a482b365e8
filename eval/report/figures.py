"""The report's own figure: utility against every disclosure measure, Pareto front marked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from collafuse_privacy.io import save_figure

from .analyse import disclosure_axes, pareto_front
from .collect import CellResult


def tradeoff_figure(cells: list[CellResult], path: Path) -> None:
    """Pooled FID against each disclosure measure (:func:`.analyse.disclosure_axes`), one panel each:
    every cell with its intervals and per-client FIDs, the floor band, the Pareto front, and on the
    epsilon axis the audited lower bounds; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = disclosure_axes(cells)
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.2 * len(axes_spec), 4.4), squeeze=False)
    ext = next((c.extractor for c in cells if c.extractor), "unknown extractor")
    for ax, (key, label, get) in zip(axes[0], axes_spec):
        _panel(ax, cells, key, label, get, ext)
    fig.suptitle("Utility vs disclosure across cut ratios and defences (bars: 95% intervals; faint dots: per-client "
                 "FID; square: DP-SGD clients" + ("; triangle: audited empirical epsilon, 95% lower bound" if any(
                     c.audits for c in cells) else "") + ")", fontsize=10)  # fmt: skip
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _panel(ax, cells: list[CellResult], key: str, label: str, get, ext: str) -> None:
    """One disclosure measure's panel."""
    pts, names = [], []
    for c in cells:
        x = get(c)
        if x is None or c.fid is None or math.isnan(c.fid):
            continue
        if key == "eps":
            x = x if math.isfinite(x) else np.nan
        pts.append((x, c.fid))
        names.append(c)
    if key == "eps":
        pts, lo, hi = _epsilon_scale(ax, pts, names)
    for (x, y), c in zip(pts, names):
        _cell(ax, x, y, c, key)
    if key == "eps":
        _audit_marks(ax, cells, lo, hi)
    floor = next((c.floor["fid"] for c in names if c.floor and c.floor.get("fid")), None)
    if floor:
        ax.axhspan(floor["lo"], floor["hi"], color="0.85", zorder=0)
        ax.axhline(floor["value"], color="0.6", lw=0.8, zorder=0)
        ax.text(0.99, floor["value"], "floor: real members vs held-out ", transform=ax.get_yaxis_transform(),
                fontsize=7, color="0.4", ha="right", va="bottom")  # fmt: skip
    if len(pts) >= 2:
        front = pareto_front(pts)
        fx, fy = zip(*[pts[i] for i in front])
        ax.step(fx, fy, where="post", color="C2", lw=1.4, alpha=0.8, label="Pareto front (point estimates)")
        ax.scatter(fx, fy, s=140, facecolor="none", edgecolor="C2", lw=1.4, zorder=4)
        ax.legend(loc="upper right", fontsize=8)
    if key == "mia":
        ax.axvline(0.5, color="0.6", ls=":", lw=1)
        ax.text(0.5, 0.02, " chance", transform=ax.get_xaxis_transform(), fontsize=7, color="0.4")
    ax.set_xlabel(label, fontsize=8.5)
    ax.set_ylabel(f"pooled FID ({ext}) - lower is better", fontsize=8.5)
    ax.grid(alpha=0.3)


def _epsilon_scale(ax, pts: list, names: list[CellResult]) -> tuple[list, float, float]:
    """The epsilon axis in log scale over the finite epsilons and the audited lower bounds; infinite
    epsilons drawn at its right end (``hi``), small ones at its left (``lo``)."""
    finite_eps = [p[0] for p in pts if np.isfinite(p[0]) and p[0] > 0]
    finite_eps += [a["epsilon_lb"] for c in names for a in c.audits if a["target"] == "server" and a["epsilon_lb"] > 0]
    hi = max(finite_eps) * 30 if finite_eps else 1e3
    lo = min(finite_eps) / 3 if finite_eps else 1e-1
    pts = [((hi if not np.isfinite(x) else max(x, lo)), y) for x, y in pts]
    ax.set_xscale("log")
    ax.axvline(hi / 1.8, color="0.8", lw=0.8)
    ax.text(hi, ax.get_ylim()[1], "", ha="right")
    return pts, lo, hi


def _cell(ax, x: float, y: float, c: CellResult, key: str) -> None:
    """One cell: its per-client FIDs, its marker (square: DP-SGD, diamond: fixed noise), intervals, tag."""
    dp = bool(c.dp and c.dp.get("enabled"))
    ax.scatter([x] * len(c.fid_per_client), c.fid_per_client, s=12, color="C0", alpha=0.25, lw=0)
    mk = "s" if dp else ("D" if c.fixed_noise else "o")
    ax.scatter([x], [y], s=46, marker=mk, color="C3" if dp else "C0", zorder=3, edgecolor="k", lw=0.5)
    xiv = _x_interval(c, key)
    ax.errorbar([x], [y], yerr=[[max(0.0, y - c.fid_ci["lo"])], [max(0.0, c.fid_ci["hi"] - y)]] if c.fid_ci else None,
                xerr=[[max(0.0, x - xiv[0])], [max(0.0, xiv[1] - x)]] if xiv else None,
                fmt="none", ecolor="0.35", elinewidth=0.9, capsize=2, zorder=2)  # fmt: skip
    tag = (f"fedavg L={c.local_steps}" if c.protocol == "fedavg" else f"c={c.cut_ratio:g}") + (" DP" if dp else "") + (" fixed" if c.fixed_noise else "")
    if key == "mia" and c.nothing_sent():
        tag += " (nothing sent: chance)"
    if key == "eps" and c.view_epsilon is not None and not math.isfinite(c.view_epsilon):
        tag += " (eps=inf)"
    if key == "eps" and c.view_epsilon == 0:
        tag += " (eps=0: nothing sent)"
    ax.annotate(tag, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7.5)


def _x_interval(c: CellResult, key: str):
    """``(lo, hi)`` of a cell's disclosure number on axis ``key`` (None without an interval)."""
    best = c.best_membership(key="auc") if key == "mia" else c.best_reconstruction("ssim") if key == "ssim" else None
    if not best or not isinstance(best[1], dict) or best[1].get("lo") is None or best[1].get("hi") is None:
        return None
    return best[1]["lo"], best[1]["hi"]


def _audit_marks(ax, cells: list[CellResult], lo: float, hi: float) -> None:
    """Audited cells on the epsilon axis: the empirical epsilon lower bound (triangle; an assumption-free
    route, never the GDP route's mu) joined to the formal epsilon by a dashed line, labelled with it."""
    for c in cells:
        if c.fid is None or math.isnan(c.fid):
            continue
        for a in c.audits:
            if a["target"] != "server" or c.view_epsilon is None or not math.isfinite(c.view_epsilon):
                continue
            lb = max(a["epsilon_lb"], lo)
            ax.plot([lb, c.view_epsilon], [c.fid, c.fid], color="C1", ls="--", lw=1)
            ax.scatter([lb], [c.fid], marker="<", s=60, color="C1", edgecolor="k", lw=0.5, zorder=5,
                       label="audit: empirical eps (95% lower bound)")  # fmt: skip
            ratio = f" ({a['epsilon_route']})" if a.get("epsilon_route") else ""
            ax.annotate(f"audit: eps >= {a['epsilon_lb']:.3g}{ratio}" + (" FAILED" if a["check"] == "failed" else ""),
                        (lb, c.fid), textcoords="offset points", xytext=(4, -12), fontsize=7, color="C1", ha="left")
