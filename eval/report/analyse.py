"""Analysis of collected cells: the Pareto front of utility against disclosure, its knee,
and a short plain-language reading computed from the numbers."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from .collect import CellResult


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when minimising both coordinates."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i])


Interval = tuple[float, float, float]  # (point, lo, hi)


def dominated_beyond_intervals(items: list[tuple[Interval, Interval]]) -> dict[int, int]:
    """``{i: j}``: setting ``i`` is dominated by ``j`` when minimising both coordinates, decided on
    the 95% intervals: ``j`` is worse on neither axis and better on at least one, where better means
    its interval lies wholly below ``i``'s (``hi_j < lo_i``) and worse the reverse; overlapping
    intervals are a tie. A difference inside the intervals dominates nothing."""

    def cmp(a: Interval, b: Interval) -> int:
        return -1 if a[2] < b[1] else 1 if b[2] < a[1] else 0

    out = {}
    for i, (xi, yi) in enumerate(items):
        for j, (xj, yj) in enumerate(items):
            if j != i and i not in out:
                rel = (cmp(xj, xi), cmp(yj, yi))
                if 1 not in rel and -1 in rel:
                    out[i] = j
    return out


def knee(points: list[tuple[float, float]], front: list[int]) -> Optional[int]:
    """The front point farthest below the chord joining its two ends (axes scaled to [0, 1])."""
    if len(front) < 3:
        return None
    P = np.array([points[i] for i in front], dtype=float)
    lo, span = P.min(0), np.ptp(P, 0)
    span[span == 0] = 1.0
    Q = (P - lo) / span
    a, b = Q[0], Q[-1]
    d = b - a
    dist = np.abs(d[0] * (Q[:, 1] - a[1]) - d[1] * (Q[:, 0] - a[0])) / max(np.hypot(*d), 1e-12)
    k = int(np.argmax(dist[1:-1])) + 1
    return front[k]


def disclosure_axes(cells: list[CellResult]) -> list[tuple[str, str, Callable[[CellResult], Optional[float]]]]:
    """(key, axis label, getter) for each disclosure measure; getter None = not available."""

    def mia(c: CellResult):
        if c.nothing_sent():
            return 0.5  # nothing crossed the cut: no test beats chance
        best = c.best_membership(key="auc")
        return best[1]["value"] if best else None

    def ssim(c: CellResult):
        best = c.best_reconstruction("ssim")
        return best[1]["value"] if best else None

    def eps(c: CellResult):
        return c.view_epsilon if c.view_epsilon is not None and not math.isnan(c.view_epsilon) else None

    # AUC, not TPR at 1% FPR: the held-out half of a demo's candidates (hundreds of non-members) does not
    # resolve a 1% FPR (10 / FPR non-members needed for a point estimate); the tables give TPR where it is
    return [("mia", "membership AUC (strongest attack on the server's view, chosen and scored on separate halves)", mia),
            ("ssim", "reconstruction SSIM of training images (best method)", ssim),
            ("eps", "formal epsilon of the server's view (GDP; fedavg: DP-SGD's; log scale)", eps)]  # fmt: skip


def _fid_text(c: CellResult) -> str:
    iv = c.fid_ci
    return f"{c.fid:.1f}" + (f" [{iv['lo']:.1f}, {iv['hi']:.1f}]" if iv else " (no interval)")


def utility_reading(cells: list[CellResult]) -> list[str]:
    """What the quality axis shows: pooled FID with its 95% bootstrap interval beside the floor
    (members against held-out images, same extractor and n), and whether collaboration (``c = 0``,
    one model trained on every client's images) beats local-only (``c = 1``) by more than the
    intervals: non-overlapping intervals, or else "not resolved"."""
    done = [c for c in cells if c.fid is not None and math.isfinite(c.fid)]
    if not done:
        return []
    best = min(done, key=lambda c: c.fid)
    worst = max(done, key=lambda c: c.fid)
    line = (f"Image quality (pooled FID, 95% bootstrap interval over samples; lower is better): from "
            f"{_fid_text(best)} [{best.label}] to {_fid_text(worst)} [{worst.label}]")  # fmt: skip
    floor = next((c.floor for c in done if c.floor and c.floor.get("fid")), None)
    if floor:
        f = floor["fid"]
        line += f"; the floor (real members against held-out images, same n) is {f['value']:.1f} [{f['lo']:.1f}, {f['hi']:.1f}]"
    lines = [line + "."]
    plain = [c for c in done if not (c.dp and c.dp.get("enabled")) and not c.fixed_noise]
    ends = {e: [c for c in plain if c.cut_ratio == e] for e in (0.0, 1.0)}
    if len(ends[0.0]) == 1 and len(ends[1.0]) == 1 and ends[0.0][0].fid_ci and ends[1.0][0].fid_ci:
        a, b = ends[0.0][0], ends[1.0][0]
        if a.fid_ci["hi"] < b.fid_ci["lo"]:
            verdict = "collaboration improves on local-only: the intervals do not overlap"
        elif b.fid_ci["hi"] < a.fid_ci["lo"]:
            verdict = "local-only is better than one model trained on every client's images: the intervals do not overlap"
        else:
            verdict = "the intervals overlap, so this run does not resolve whether collaboration helps"
        lines.append(f"Collaboration: server-only c = 0 scores {_fid_text(a)} against local-only c = 1 {_fid_text(b)}; "
                     f"{verdict}.")  # fmt: skip
    return lines


def reading(cells: list[CellResult]) -> list[str]:
    """A short plain-language reading: the quality axis, then dominated settings and the knee per
    disclosure measure, the formal guarantees, and the audits."""
    return (utility_reading(cells) + fedavg_reading(cells) + front_reading(cells) + epsilon_reading(cells)
            + audit_reading(cells))


def _iv_text(best: Optional[tuple[str, dict]]) -> str:
    if not best:
        return "not measured"
    iv = best[1]
    return f"{iv['value']:.3f}" + (f" [{iv['lo']:.3f}, {iv['hi']:.3f}]" if iv.get("lo") is not None else "") + f" ({best[0]})"


def fedavg_reading(cells: list[CellResult]) -> list[str]:
    """FedAvg against CollaFuse's ends (issue 26): quality against c = 0 and c = 1 (plain cells), what
    the server holds and how well the strongest membership attack reads it, the formal epsilon, and
    the client's burden."""
    done = [c for c in cells if c.fid is not None and math.isfinite(c.fid)]
    plain = [c for c in done if c.protocol != "fedavg" and not (c.dp and c.dp.get("enabled")) and not c.fixed_noise]
    seeded = len({c.seed for c in done}) > 1
    lines = []
    for f in (c for c in done if c.protocol == "fedavg"):
        # the ends trained with the FedAvg cell's seed: one thing differs (training seeds move FID more than
        # the bootstrap interval over samples says)
        ends = {e: next((c for c in plain if c.cut_ratio == e and c.seed == f.seed), None) for e in (0.0, 1.0)}
        q = f"FedAvg [{f.label}]: FID {_fid_text(f)}"
        if seeded and ends[0.0] is None:
            q += f" (no CollaFuse c = 0 cell trained with seed {f.seed} to compare with)"
        a = ends[0.0]
        if a is not None and a.fid_ci and f.fid_ci:
            where = ("inside" if a.fid_ci["lo"] <= f.fid <= a.fid_ci["hi"] else
                     f"{f.fid - a.fid_ci['hi']:.1f} above" if f.fid > a.fid_ci["hi"] else f"{a.fid_ci['lo'] - f.fid:.1f} below")
            q += f", {where} the interval of CollaFuse c = 0 ({_fid_text(a)}{f', seed {a.seed}' if seeded else ''})"
        if ends[1.0] is not None:
            q += f"; local-only c = 1: {_fid_text(ends[1.0])}"
        eps = f.view_epsilon
        eps_text = ("infinite (a model can memorise its images)" if eps is not None and not math.isfinite(eps) else
                    f"{eps:.3g} (the clients' DP-SGD epsilon, add/remove one image)" if eps is not None else "not reported")
        c0 = f"; CollaFuse c = 0's server model: {_iv_text(a.best_membership(key='auc'))}" if a is not None else ""
        burden = (f" Client burden: {f.client_flop_share:.2f} of the sampling FLOPs" if f.client_flop_share is not None else "")
        if f.bytes_per_image is not None:
            burden += f", {f.bytes_per_image:.0f} bytes uploaded per training image"
            if a is not None and a.bytes_per_image is not None:
                burden += f" (c = 0 sends {a.bytes_per_image:.0f})"
        lines.append(q + f". Its server holds whole models: membership AUC on client 0's upload "
                     f"{_iv_text(f.best_membership('client:0', 'auc'))}{c0}; formal epsilon of the view {eps_text}."
                     + (burden + "." if burden else ""))  # fmt: skip
    return lines


def _disclosure_interval(c: CellResult, key: str) -> Optional[Interval]:
    """A cell's disclosure on axis ``key`` as ``(point, lo, hi)``: membership AUC floored at chance
    (0.5: an attack below chance discloses nothing; nothing sent is exactly 0.5), or the best SSIM."""
    if key == "mia" and c.nothing_sent():
        return 0.5, 0.5, 0.5
    best = c.best_membership(key="auc") if key == "mia" else c.best_reconstruction("ssim")
    if not best:
        return None
    iv = best[1]
    v, lo, hi = iv["value"], iv.get("lo"), iv.get("hi")
    lo, hi = (v if lo is None else lo), (v if hi is None else hi)
    if key == "mia":
        v, lo, hi = max(v, 0.5), max(lo, 0.5), max(hi, 0.5)
    return v, lo, hi


def front_reading(cells: list[CellResult]) -> list[str]:
    """Per disclosure measure (membership, reconstruction): the settings dominated beyond the 95%
    intervals on both axes (:func:`dominated_beyond_intervals`; membership AUC floored at chance),
    and the knee of the front of point estimates."""
    lines = []
    for key, label, _ in disclosure_axes(cells)[:2]:
        items, names = [], []
        for c in cells:
            x = _disclosure_interval(c, key)
            if x is None or c.fid is None or math.isnan(c.fid):
                continue
            fid = (c.fid, c.fid_ci["lo"], c.fid_ci["hi"]) if c.fid_ci else (c.fid, c.fid, c.fid)
            items.append((x, fid))
            names.append(c.label)
        short = label.split(" (")[0]
        if len(items) < 2:
            lines.append(f"{label}: fewer than two settings have both numbers, so nothing can be compared.")
            continue
        dom = dominated_beyond_intervals(items)
        if dom:
            lines.append(f"Against {short}, these settings are dominated beyond the 95% intervals (another is better "
                         f"on FID or {short} with intervals apart, and worse on neither): "
                         + "; ".join(f"{names[i]} (by {names[j]})" for i, j in dom.items()) + ".")  # fmt: skip
        else:
            lines.append(f"Against {short}, no setting is dominated beyond the 95% intervals: every difference in "
                         "one measure is paid for in the other, or lies inside the intervals.")  # fmt: skip
        pts = [(x[0], y[0]) for x, y in items]
        front = pareto_front(pts)
        k = knee(pts, front)
        if k is not None:
            lines.append(f"The knee of the {short} front (point estimates) is [{names[k]}]: FID {pts[k][1]:.2f} at "
                         f"{short} {pts[k][0]:.3f}; the front runs from FID {pts[front[0]][1]:.2f} at "
                         f"{pts[front[0]][0]:.3f} to FID {pts[front[-1]][1]:.2f} at {pts[front[-1]][0]:.3f}.")  # fmt: skip
    return lines


def epsilon_reading(cells: list[CellResult]) -> list[str]:
    """The formal guarantee of the server's view: linked, unlinked, and why the unlinked one is missing."""
    eps = [(c.label, c.view_epsilon) for c in cells if c.view_epsilon is not None and not math.isnan(c.view_epsilon)
           and c.protocol != "fedavg"]  # fedavg's view: fedavg_reading (DP-SGD's epsilon, no GDP)
    if not eps:
        return []
    finite = [(n, e) for n, e in eps if math.isfinite(e) and e > 0]
    lines = []
    if finite:
        useful = [(n, e) for n, e in finite if e <= 10]
        lines.append("Formal guarantee for the server's view, linked (a server that attributes every release to its "
                     "image; GDP, delta as in privacy.json): finite epsilon for "
                     + "; ".join(f"[{n}] eps={e:.3g}" for n, e in finite) + ". "
                     + (("Only " + ", ".join(f"[{n}]" for n, _ in useful) + " reach eps <= 10, the range where a "
                         "guarantee means something; ") if useful else "None reaches eps <= 10, the range where "
                        "a guarantee means something; ")
                     + "elsewhere the empirical attacks are the only evidence.")  # fmt: skip
    else:
        lines.append("No setting that sends images has a finite formal epsilon for the server's view: "
                     "the empirical attacks above are the only evidence of privacy.")  # fmt: skip
    unlinked = [(c.label, c.view_epsilon_unlinked, c.view_epsilon_unlinked_add_remove) for c in cells
                if c.view_epsilon_unlinked is not None]  # fmt: skip
    if unlinked:
        lines.append("For the unlinked server of our threat model (it cannot know in which rounds an image was "
                     "drawn, but may recognise its row when present; the secret-sampling bound, replace-one / "
                     "add-remove, the latter infinite because a row's presence reveals the image): "
                     + "; ".join(f"[{n}] eps={a:.3g} / {b:.3g}" for n, a, b in unlinked) + ".")  # fmt: skip
    refused = sorted({c.unlinked_reason for c in cells if c.view_epsilon_unlinked is None and c.unlinked_reason
                      and c.view_epsilon is not None})  # fmt: skip
    if refused:
        lines.append("The unlinked epsilon is " + ("not reported for the other settings" if unlinked else
                     "not reported") + ": " + "; ".join(r.removeprefix("not reported: ") for r in refused) + ".")
    return lines


def audit_reading(cells: list[CellResult]) -> list[str]:
    """One line per audit: its lower bounds against the formal numbers, and whether the check failed."""
    lines = []
    for c in cells:
        for a in c.audits:
            what = "the server's view" if a["target"] == "server" else a["target"].replace(":", " ") + "'s model"
            vo = a["view_only"]
            mu = (f"mu is at least {a['mu_lb']:.3g} (GDP route, {a['mu_method']}) against a formal mu "
                  f"{a['formal_mu']:.4g}; " if a.get("mu_lb") is not None and a.get("formal_mu") is not None else "")
            lines.append(f"Audit of [{c.label}] ({what}, {a['canaries']} {a['canary_kind']} canaries, 95% confidence): "
                         + mu + f"epsilon is at least {a['epsilon_lb']:.3g} ({a['epsilon_route'] or 'no'} route, "
                         f"{a['epsilon_method'] or 'no method'}) against a formal {a['formal_epsilon']:.4g}"
                         + (f" (ratio of {a['ratio_of']} {a['ratio']:.2f})" if a["ratio"] is not None else "")
                         + (f"; without ground-truth links the best attack ({vo['method']}, chosen on a held-out "
                            f"half) certifies epsilon {vo['epsilon_lb']:.3g} ({vo['route']} route)"
                            if vo and a["target"] == "server" else "")
                         + _unlinked_phrase(a.get("unlinked"))
                         + (". FAILED: the run discloses more than its accounting says." if a["check"] == "failed"
                            else "."))  # fmt: skip
    return lines


def _unlinked_phrase(u: Optional[dict]) -> str:
    """The unlinked claim's audit in one clause (empty where there is none)."""
    if not u:
        return ""
    if u["check"] == "not audited":
        return f"; the unlinked epsilon is not audited ({u['reason']})"
    ratio = f", {u['ratio']:.2f} of it" if u.get("ratio") is not None else ""
    return (f"; against the unlinked epsilon {u['formal_epsilon']:.4g} the best view-only attack ({u['best']}) "
            f"certifies {u['epsilon_lb']:.3g}{ratio} (one-run; {u['check']})")


def across_seeds(cells: list[CellResult]) -> list[dict]:
    """Settings trained with several seeds: the mean of each headline number over the seeds with a
    95% t-interval (training randomness), beside the median width of the per-seed bootstrap
    intervals (candidates for the attacks, generated and real images for FID / KID). One dict per setting with at least two finished seeds."""
    from scipy import stats

    groups: dict[str, list[CellResult]] = {}
    for c in cells:
        if c.status == "done":
            groups.setdefault(c.setting or c.label, []).append(c)
    out = []
    for setting, cs in groups.items():
        if len(cs) < 2:
            continue
        row = {"setting": setting, "seeds": len(cs)}
        for key, get in (("fid", lambda c: (c.fid, _width(c.fid_ci))),
                         ("kid", lambda c: (c.kid, _width(c.kid_ci))),
                         ("tpr1", lambda c: _iv_of(c.best_membership(key="tpr1"))),
                         ("auc", lambda c: _iv_of(c.best_membership(key="auc"))),
                         ("ssim", lambda c: _iv_of(c.best_reconstruction("ssim")))):  # fmt: skip
            vals = [get(c) for c in cs]
            xs = np.array([v for v, _ in vals if v is not None and math.isfinite(v)], dtype=float)
            widths = [w for _, w in vals if w is not None and math.isfinite(w)]
            if len(xs) >= 2:
                half = float(stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs)))
                row[key] = {"mean": float(xs.mean()), "lo": float(xs.mean() - half), "hi": float(xs.mean() + half),
                            "bootstrap_width": float(np.median(widths)) if widths else None}  # fmt: skip
            else:
                row[key] = None
        out.append(row)
    return out


def _width(ci: Optional[dict]) -> Optional[float]:
    return None if ci is None else ci["hi"] - ci["lo"]


def _iv_of(best) -> tuple[Optional[float], Optional[float]]:
    if not best:
        return None, None
    iv = best[1]
    return iv["value"], iv["hi"] - iv["lo"]
