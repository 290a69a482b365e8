"""``collafuse-privacy report``: disclosure against image quality, from metrics files only.

Reads run directories and sweep directories (``sweep.json`` + ``cells/``) and
writes ``report.md``, a self-contained ``report.html`` (images embedded as data
URIs, no scripts, opens from disk) and ``figures/*.png``. Every number comes from
the runs' ``metrics/*.json`` (quality, membership, reconstruction, privacy,
burden); a number that is missing is shown as missing, with the reason the
metrics file gives.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from collafuse_privacy.errors import UserError
from collafuse_privacy.io import atomic_write_bytes, atomic_write_text
from collafuse_privacy.sweep import read_cell

INF = float("inf")


def num(x) -> float:
    """A JSON number as float: "inf" -> inf, None -> nan."""
    if x is None:
        return float("nan")
    if isinstance(x, str):
        return {"inf": INF, "-inf": -INF}.get(x, float("nan"))
    return float(x)


def _iv(d) -> Optional[dict]:
    """An interval dict -> {'value', 'lo', 'hi'} floats, or None."""
    if not isinstance(d, dict) or "value" not in d:
        return None
    return {"value": num(d.get("value")), "lo": num(d.get("lo")), "hi": num(d.get("hi"))}


def _read(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON") from None


@dataclass
class CellResult:
    """Headline numbers of one run, all read from its metrics files."""

    label: str
    run_dir: Path
    status: str = "done"
    error: Optional[str] = None
    cut_ratio: float = float("nan")
    t_c: Optional[int] = None
    protocol: str = ""
    fixed_noise: bool = False
    dp: Optional[dict] = None  # client DP-SGD settings and epsilon
    seed: int = 0
    fid: Optional[float] = None
    fid_per_client: list = field(default_factory=list)
    kid: Optional[float] = None
    extractor: Optional[str] = None
    membership: dict = field(default_factory=dict)  # target -> method -> {auc, tpr1, tpr01, applicable, reason}
    membership_gdp: dict = field(default_factory=dict)  # target -> gdp dict
    reconstruction: dict = field(default_factory=dict)  # method -> {ssim, psnr, mse, ident, chance, ...}
    reconstruction_sent: Optional[bool] = None
    reconstruction_reason: Optional[str] = None
    view_epsilon: Optional[float] = None
    view_mu: Optional[float] = None
    view_delta: Optional[float] = None
    client_flop_share: Optional[float] = None
    bytes_per_image: Optional[float] = None
    paper_kid: Optional[float] = None  # mean over clients: KID(server training images, client members)
    paper_mse: Optional[float] = None
    figures: dict = field(default_factory=dict)  # name -> path

    @property
    def defence(self) -> str:
        parts = []
        if self.dp and self.dp.get("enabled"):
            nm = self.dp.get("noise_multiplier")
            eps = num(self.dp.get("epsilon"))
            parts.append(f"DP-SGD (sigma={nm}, eps={eps:.3g})" if nm is not None else "DP-SGD")
        if self.fixed_noise:
            parts.append("fixed noise")
        return " + ".join(parts) or "none"

    def best_membership(self, target: str = "server", key: str = "tpr1") -> Optional[tuple[str, dict]]:
        """The strongest applicable attack on ``target`` by ``key`` (value, lo, hi)."""
        return _best(self.membership.get(target, {}), key)

    def best_reconstruction(self, key: str = "ssim") -> Optional[tuple[str, dict]]:
        """The best reconstruction of *training* images (``inference`` targets the client's
        generated outputs, a different question, and is left out)."""
        return _best({n: m for n, m in self.reconstruction.items() if m.get("source", "messages") == "messages"}, key)

    def nothing_sent(self) -> bool:
        return self.t_c is not None and self.reconstruction_sent is False

    def to_row(self) -> dict:
        """The headline numbers as plain data (what the report's table shows)."""
        row = {"label": self.label, "status": self.status, "cut_ratio": self.cut_ratio, "t_c": self.t_c,
               "protocol": self.protocol, "defence": self.defence, "fid": self.fid, "kid": self.kid,
               "extractor": self.extractor, "view_epsilon": self.view_epsilon,
               "client_dp_epsilon": num(self.dp.get("epsilon")) if self.dp and self.dp.get("enabled") else None,
               "client_flop_share": self.client_flop_share, "bytes_per_image": self.bytes_per_image,
               "paper_kid": self.paper_kid, "paper_mse": self.paper_mse}  # fmt: skip
        for target, methods in sorted(self.membership.items()):
            for name, m in sorted(methods.items()):
                for key in ("auc", "tpr1"):
                    row[f"mia[{target}].{name}.{key}"] = m[key]["value"] if m.get(key) else None
        for name, m in sorted(self.reconstruction.items()):
            for key in ("ssim", "psnr", "ident"):
                row[f"recon.{name}.{key}"] = m[key]["value"] if m.get(key) else None
        return row


def _best(methods: dict, key: str) -> Optional[tuple[str, dict]]:
    """``(name, interval)`` of the method with the largest ``key`` value, skipping missing ones."""
    scored = [(n, m[key]) for n, m in methods.items() if m.get(key) is not None and not math.isnan(m[key]["value"])]
    return max(scored, key=lambda nm: nm[1]["value"]) if scored else None


def read_run(run_dir: Path, label: Optional[str] = None, status: str = "done", error: Optional[str] = None) -> CellResult:
    """Collect one run's headline numbers from ``metrics/*.json`` (and its config)."""
    import yaml

    run_dir = Path(run_dir)
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            float(cfg.get("protocol", {}).get("cut_ratio", 0.0))
        except (yaml.YAMLError, AttributeError, TypeError, ValueError):
            raise UserError(f"{run_dir}/config.yaml is not a valid run config") from None
    proto = cfg.get("protocol", {})
    r = CellResult(label=label or run_dir.name, run_dir=run_dir, status=status, error=error,
                   cut_ratio=float(proto.get("cut_ratio", float("nan"))), protocol=str(proto.get("kind", "")),
                   fixed_noise=bool(proto.get("fixed_noise", False)), seed=int(cfg.get("seed", 0)))  # fmt: skip
    dp_cfg = (cfg.get("defense") or {}).get("client_dp") or {}
    if dp_cfg.get("enabled"):
        r.dp = dict(dp_cfg)
    m = run_dir / "metrics"

    q = _read(m / "quality.json")
    if q:
        r.extractor = q.get("extractor")
        runs = q.get("runs", [])
        own = [x for x in runs if abs(float(x.get("cut_ratio", -1)) - r.cut_ratio) < 1e-9]
        if own:
            r.fid = num(own[0]["pooled"]["fid"])
            r.kid = num(own[0]["pooled"]["kid"])
            r.fid_per_client = [num(c["fid"]) for c in own[0].get("per_client", [])]
            r.t_c = own[0].get("t_c")
        kids = [d["training"]["kid"] for d in q.get("disclosure", []) if "kid" in d.get("training", {})]
        mses = [d["training"]["pixel_mse"] for d in q.get("disclosure", []) if "pixel_mse" in d.get("training", {})]
        r.paper_kid = float(np.mean(kids)) if kids else None
        r.paper_mse = float(np.mean(mses)) if mses else None

    mem = _read(m / "membership.json") or {}
    for target, res in mem.items():
        if not isinstance(res, dict) or "methods" not in res:
            continue
        r.t_c = res.get("t_c", r.t_c)
        r.membership[target] = {}
        for name, mm in res["methods"].items():
            r.membership[target][name] = {
                "applicable": mm.get("applicable", True), "reason": mm.get("reason"),
                "auc": _iv(mm.get("auc")), "tpr1": _iv(mm.get("tpr_at_1pct_fpr")),
                "tpr01": _iv(mm.get("tpr_at_0.1pct_fpr")), "bacc": _iv(mm.get("balanced_accuracy")),
            }  # fmt: skip
        r.membership_gdp[target] = res.get("gdp") or {}
        if res.get("figure"):
            r.figures[f"roc-{target}"] = run_dir / res["figure"]

    rec = _read(m / "reconstruction.json")
    if rec:
        r.t_c = rec.get("t_c", r.t_c)
        r.reconstruction_sent = bool(rec.get("sent", True))
        r.reconstruction_reason = rec.get("reason")
        for name, mm in (rec.get("methods") or {}).items():
            if not mm.get("applicable", True):
                continue
            r.reconstruction[name] = {"ssim": _iv(mm.get("ssim")), "psnr": _iv(mm.get("psnr")),
                                      "mse": _iv(mm.get("mse")), "ident": _iv(mm.get("identification")),
                                      "chance": mm.get("chance"), "source": mm.get("source", "messages")}  # fmt: skip
        if rec.get("figure"):
            r.figures["reconstruction"] = run_dir / rec["figure"]

    priv = _read(m / "privacy.json")
    if priv:
        view = priv.get("view") or {}
        r.view_epsilon, r.view_mu, r.view_delta = num(view.get("epsilon")), num(view.get("mu")), view.get("delta")
        cdp = priv.get("client_dp") or {}
        if cdp.get("enabled"):
            r.dp = {**(r.dp or {}), **cdp}
        r.t_c = priv.get("t_c", r.t_c)

    b = _read(m / "burden.json")
    if b:
        r.client_flop_share = num(b.get("sampling_flop_ratio"))
        r.bytes_per_image = num(b.get("bytes_sent_per_training_image"))
        r.t_c = b.get("t_c", r.t_c)
    grid = run_dir / "samples" / "grid.png"
    if grid.is_file():
        r.figures["samples"] = grid
    return r


def collect(dirs) -> list[CellResult]:
    """Cells of every sweep directory and every run directory given."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"not a directory: {d}")
        sweep = d / "sweep.json"
        if sweep.is_file():
            index = _read(sweep)
            for c in index.get("cells", []):
                cdir = d / c["dir"]
                cell = read_cell(cdir)
                out.append(read_run(cdir, label=c.get("label"), status=cell.get("status", "pending"), error=cell.get("error")))
        elif (d / "config.yaml").is_file():
            out.append(read_run(d))
        else:
            raise UserError(f"{d} is neither a run directory (config.yaml) nor a sweep directory (sweep.json)")
    if not out:
        raise UserError("no runs found in " + ", ".join(map(str, dirs)))
    return out


# ---- analysis -------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when minimising both coordinates."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i])


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
            return 0.01  # nothing crossed the cut: no test beats chance, TPR = FPR
        best = c.best_membership("server", "tpr1")
        return best[1]["value"] if best else None

    def ssim(c: CellResult):
        best = c.best_reconstruction("ssim")
        return best[1]["value"] if best else None

    def eps(c: CellResult):
        return c.view_epsilon if c.view_epsilon is not None and not math.isnan(c.view_epsilon) else None

    return [("mia", "membership TPR @ 1% FPR (strongest attack on the server's view)", mia),
            ("ssim", "reconstruction SSIM of training images (best method)", ssim),
            ("eps", "formal epsilon of the server's view (GDP, log scale)", eps)]  # fmt: skip


def reading(cells: list[CellResult]) -> list[str]:
    """A short plain-language reading: dominated settings and the knee, per disclosure measure."""
    lines = []
    for key, label, get in disclosure_axes(cells)[:2]:
        pts, names = [], []
        for c in cells:
            x = get(c)
            if x is None or c.fid is None or math.isnan(c.fid):
                continue
            pts.append((x, c.fid))
            names.append(c.label)
        if len(pts) < 2:
            lines.append(f"{label}: fewer than two settings have both numbers, so nothing can be compared.")
            continue
        front = pareto_front(pts)
        dominated = [names[i] for i in range(len(pts)) if i not in front]
        short = label.split(" (")[0]
        if dominated:
            lines.append(f"Against {short}, these settings are dominated (another has both lower FID and lower "
                         f"disclosure): {'; '.join(dominated)}.")  # fmt: skip
        else:
            lines.append(f"Against {short}, no setting is dominated: every one trades quality for privacy.")
        k = knee(pts, front)
        if k is not None:
            lines.append(f"The knee of the {short} front is [{names[k]}]: FID {pts[k][1]:.2f} at {short} "
                         f"{pts[k][0]:.3f}; the front runs from FID {pts[front[0]][1]:.2f} at {pts[front[0]][0]:.3f} "
                         f"to FID {pts[front[-1]][1]:.2f} at {pts[front[-1]][0]:.3f}.")  # fmt: skip
    eps = [(c.label, c.view_epsilon) for c in cells if c.view_epsilon is not None and not math.isnan(c.view_epsilon)]
    finite = [(n, e) for n, e in eps if math.isfinite(e) and e > 0]
    if eps:
        if finite:
            useful = [(n, e) for n, e in finite if e <= 10]
            lines.append("Formal guarantee for the server's view (GDP, delta as in privacy.json): finite epsilon for "
                         + "; ".join(f"[{n}] eps={e:.3g}" for n, e in finite) + ". "
                         + (("Only " + ", ".join(f"[{n}]" for n, _ in useful) + " reach eps <= 10, the range where a "
                             "guarantee means something; ") if useful else "None reaches eps <= 10, the range where "
                            "a guarantee means something; ")
                         + "elsewhere the empirical attacks are the only evidence.")  # fmt: skip
        else:
            lines.append("No setting that sends images has a finite formal epsilon for the server's view: "
                         "the empirical attacks above are the only evidence of privacy.")  # fmt: skip
    return lines


# ---- figures --------------------------------------------------------------------------


def tradeoff_figure(cells: list[CellResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_spec = disclosure_axes(cells)
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.2 * len(axes_spec), 4.4), squeeze=False)
    ext = next((c.extractor for c in cells if c.extractor), "unknown extractor")
    markers = {"none": "o"}
    for ax, (key, label, get) in zip(axes[0], axes_spec):
        pts, names, cs = [], [], []
        for c in cells:
            x = get(c)
            if x is None or c.fid is None or math.isnan(c.fid):
                continue
            if key == "eps":
                x = x if math.isfinite(x) else np.nan
            pts.append((x, c.fid))
            names.append(c)
        finite_eps = [p[0] for p in pts if key == "eps" and np.isfinite(p[0]) and p[0] > 0]
        if key == "eps":
            hi = max(finite_eps) * 30 if finite_eps else 1e3
            lo = min(finite_eps) / 3 if finite_eps else 1e-1
            pts = [((hi if not np.isfinite(x) else max(x, lo)), y) for x, y in pts]
            ax.set_xscale("log")
            ax.axvline(hi / 1.8, color="0.8", lw=0.8)
            ax.text(hi, ax.get_ylim()[1], "", ha="right")
        for (x, y), c in zip(pts, names):
            ax.scatter([x] * len(c.fid_per_client), c.fid_per_client, s=12, color="C0", alpha=0.25, lw=0)
            mk = "s" if c.dp and c.dp.get("enabled") else ("D" if c.fixed_noise else markers["none"])
            ax.scatter([x], [y], s=46, marker=mk, color="C3" if c.dp and c.dp.get("enabled") else "C0", zorder=3,
                       edgecolor="k", lw=0.5)  # fmt: skip
            tag = f"c={c.cut_ratio:g}" + (" DP" if c.dp and c.dp.get("enabled") else "") + (" fixed" if c.fixed_noise else "")
            if key == "mia" and c.nothing_sent():
                tag += " (nothing sent: chance)"
            if key == "eps" and c.view_epsilon is not None and not math.isfinite(c.view_epsilon):
                tag += " (eps=inf)"
            if key == "eps" and c.view_epsilon == 0:
                tag += " (eps=0: nothing sent)"
            ax.annotate(tag, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7.5)
        if len(pts) >= 2:
            front = pareto_front(pts)
            fx, fy = zip(*[pts[i] for i in front])
            ax.step(fx, fy, where="post", color="C2", lw=1.4, alpha=0.8, label="Pareto front")
            ax.scatter(fx, fy, s=140, facecolor="none", edgecolor="C2", lw=1.4, zorder=4)
            ax.legend(loc="upper right", fontsize=8)
        if key == "mia":
            ax.axvline(0.01, color="0.6", ls=":", lw=1)
            ax.text(0.01, 0.02, " chance", transform=ax.get_xaxis_transform(), fontsize=7, color="0.4")
        ax.set_xlabel(label, fontsize=8.5)
        ax.set_ylabel(f"pooled FID ({ext}) - lower is better", fontsize=8.5)
        ax.grid(alpha=0.3)
    fig.suptitle("Utility vs disclosure across cut ratios and defences (faint dots: per-client FID; "
                 "square: DP-SGD clients)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def _savefig(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


# ---- writing --------------------------------------------------------------------------


def _fmt(x, spec=".3g") -> str:
    if x is None:
        return "n/a"
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return format(x, spec)


def _fmt_iv(iv, spec=".3f") -> str:
    if not iv:
        return "n/a"
    return f"{_fmt(iv['value'], spec)} [{_fmt(iv['lo'], spec)}, {_fmt(iv['hi'], spec)}]"


class _Notes:
    """Numbered footnotes for 'n/a' cells, so long reasons do not widen the tables."""

    def __init__(self):
        self.items: list[str] = []

    def na(self, reason) -> str:
        reason = str(reason or "no reason given")
        if reason not in self.items:
            self.items.append(reason)
        return f"n/a [{self.items.index(reason) + 1}]"


def tables(cells: list[CellResult], notes: Optional[dict] = None) -> dict[str, list[list[str]]]:
    """Named tables (header row first) of the report; ``notes`` (if given) receives the
    footnotes of each table: ``{table name: [reason, ...]}``."""
    mia_notes = _Notes()
    main = [["setting", "c", "t_c", "protocol", "defence", "FID pooled", "KID pooled", "formal eps (view)",
             "client FLOP share", "bytes sent / image", "status"]]  # fmt: skip
    for c in cells:
        main.append([c.label, _fmt(c.cut_ratio, "g"), str(c.t_c if c.t_c is not None else "n/a"), c.protocol, c.defence,
                     _fmt(c.fid, ".2f"), _fmt(c.kid, ".4f"), _fmt(c.view_epsilon), _fmt(c.client_flop_share, ".3f"),
                     _fmt(c.bytes_per_image, ".0f"), c.status + (f": {c.error}" if c.error else "")])  # fmt: skip
    mia_methods = sorted({m for c in cells for t in c.membership.values() for m in t})
    targets = sorted({t for c in cells for t in c.membership})
    mia = [["setting", "target"] + [f"{m} AUC" for m in mia_methods] + [f"{m} TPR@1%FPR" for m in mia_methods]
           + ["GDP bound TPR@1%FPR"]]  # fmt: skip
    for c in cells:
        for t in targets:
            res = c.membership.get(t)
            if res is None:
                continue
            row = [c.label, t]
            for key in ("auc", "tpr1"):
                for m in mia_methods:
                    mm = res.get(m)
                    if mm is None:
                        row.append("not run")
                    elif not mm.get("applicable", True):
                        row.append(mia_notes.na(mm.get("reason")))
                    else:
                        row.append(_fmt_iv(mm.get(key)))
            gdp = c.membership_gdp.get(t, {})
            row.append(_fmt(num(gdp.get("tpr_bound_at_1pct_fpr")), ".3f") if gdp else "n/a")
            mia.append(row)
    rec_methods = sorted({m for c in cells for m in c.reconstruction})
    rec = [["setting"] + [f"{m} SSIM" for m in rec_methods] + [f"{m} PSNR dB" for m in rec_methods]
           + [f"{m} ident." for m in rec_methods] + ["chance ident."]]  # fmt: skip
    for c in cells:
        if c.reconstruction_sent is None:
            continue
        if not c.reconstruction_sent:
            rec.append([c.label] + ["nothing sent"] * (3 * len(rec_methods)) + ["-"])
            continue
        row = [c.label]
        for key, spec in (("ssim", ".3f"), ("psnr", ".1f"), ("ident", ".3f")):
            row += [_fmt_iv(c.reconstruction.get(m, {}).get(key), spec) if m in c.reconstruction else "n/a" for m in rec_methods]
        chances = [v.get("chance") for v in c.reconstruction.values() if v.get("chance") is not None]
        row.append(_fmt(chances[0], ".4f") if chances else "n/a")
        rec.append(row)
    paper = [["setting", "KID(server training images, client data)", "pixel MSE over pairs",
              "ours: best TPR@1%FPR", "ours: best SSIM"]]  # fmt: skip
    for c in cells:
        bm, br = c.best_membership(), c.best_reconstruction()
        paper.append([c.label, _fmt(c.paper_kid, ".4f"), _fmt(c.paper_mse, ".4f"),
                      f"{_fmt(bm[1]['value'], '.3f')} ({bm[0]})" if bm else "n/a",
                      f"{_fmt(br[1]['value'], '.3f')} ({br[0]})" if br else "n/a"])  # fmt: skip
    if notes is not None:
        notes["membership"] = mia_notes.items
    return {"settings": main, "membership": mia, "reconstruction": rec, "paper": paper}


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1280px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0;display:block;overflow-x:auto}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;white-space:nowrap}th{background:#f4f4f4}
img{max-width:100%;border:1px solid #eee}.fig{margin:.5em 0}.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0;max-width:420px}figcaption{font-size:.8em;color:#555}p.lead{color:#444;margin:.3em 0 .8em}ul.notes{font-size:.8em;color:#555;list-style:none;padding-left:.5em}"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def write_report(dirs, out: Optional[str | Path] = None, screenshot: bool = True,
                 log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Collect, plot and write ``report.md`` / ``report.html`` / ``figures/``; returns paths and rows."""
    dirs = [Path(d) for d in dirs]
    cells = collect(dirs)
    out = Path(out) if out else dirs[0]
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    tradeoff = fig_dir / "tradeoff.png"
    tradeoff_figure(cells, tradeoff)
    copied: dict[str, list[tuple[str, Path]]] = {"roc": [], "reconstruction": [], "samples": []}
    for i, c in enumerate(cells):
        for name, p in c.figures.items():
            if not Path(p).is_file():
                continue
            kind = "roc" if name.startswith("roc") else name
            dst = fig_dir / f"{i:02d}-{name.replace(':', '')}.png"
            atomic_write_bytes(dst, Path(p).read_bytes())
            copied.setdefault(kind, []).append((f"{c.label} ({name})" if kind == "roc" else c.label, dst))
    notes: dict = {}
    tabs = tables(cells, notes)
    words = reading(cells)
    ext = next((c.extractor for c in cells if c.extractor), None)
    title = "CollaFuse privacy report: " + ", ".join(d.name for d in dirs)
    lead = (f"{len(cells)} settings. Utility: FID/KID of collaborative samples against each client's held-out "
            f"images ({ext or 'no quality metrics found'}). Disclosure: what an honest-but-curious server "
            "infers from its view alone (membership and reconstruction attacks, scored against ground truth "
            "with bootstrap 95% intervals), and the formal GDP epsilon of that view.")  # fmt: skip
    sections = [("Trade-off", None), ("Reading", None), ("Settings", "settings"), ("Membership inference", "membership"),
                ("Reconstruction", "reconstruction"), ("The paper's disclosure figures beside ours", "paper")]  # fmt: skip

    md = [f"# {title}", "", lead, "", "![trade-off](figures/tradeoff.png)", "", "## Reading", ""]
    md += [f"- {w}" for w in words]
    for head, key in sections[2:]:
        md += ["", f"## {head}", "", _md_table(tabs[key])]
        md += [""] + [f"[{i + 1}] {n}  " for i, n in enumerate(notes.get(key, []))]
    for kind, head in (("roc", "ROC curves (log-log, with the GDP bound)"), ("reconstruction", "Reconstructions"),
                       ("samples", "Samples per client")):  # fmt: skip
        if copied.get(kind):
            md += ["", f"## {head}", ""] + [f"![{lab}](figures/{p.name})" for lab, p in copied[kind]]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")

    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='lead'>{html.escape(lead)}</p>",
            f"<div class='fig'><img alt='trade-off plot' src='{_data_uri(tradeoff)}'></div>",
            "<h2>Reading</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in words) + "</ul>"]  # fmt: skip
    for head, key in sections[2:]:
        foot = "".join(f"<li>[{i + 1}] {html.escape(n)}</li>" for i, n in enumerate(notes.get(key, [])))
        body.append(f"<h2>{html.escape(head)}</h2>{_html_table(tabs[key])}"
                    + (f"<ul class='notes'>{foot}</ul>" if foot else ""))  # fmt: skip
    for kind, head in (("roc", "ROC curves (log-log, with the GDP bound)"), ("reconstruction", "Reconstructions"),
                       ("samples", "Samples per client")):  # fmt: skip
        if copied.get(kind):
            figs = "".join(f"<figure><img alt='{html.escape(lab)}' src='{_data_uri(p)}'><figcaption>{html.escape(lab)}"
                           f"</figcaption></figure>" for lab, p in copied[kind])  # fmt: skip
            body.append(f"<h2>{html.escape(head)}</h2><div class='grid'>{figs}</div>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{CSS}</style></head><body>{''.join(body)}</body></html>")  # fmt: skip
    atomic_write_text(out / "report.html", page)
    result = {"report_md": str(out / "report.md"), "report_html": str(out / "report.html"),
              "figures": sorted(str(p) for p in fig_dir.glob("*.png")), "rows": [c.to_row() for c in cells],
              "reading": words}  # fmt: skip
    if screenshot:
        result["screenshot"] = screenshot_report(out / "report.html", out / "report-screenshot.png", log)
    return result


def chromium_path() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def screenshot_report(page: Path, png: Path, log: Callable[[str], None] = print) -> dict:
    """First screen of the report in headless Chromium, and its console errors (if Chromium is installed)."""
    exe = chromium_path()
    if exe is None:
        log("no Chromium found: skipped the report screenshot (install Debian's 'chromium' to get one)")
        return {"taken": False, "reason": "chromium not installed"}
    with tempfile.TemporaryDirectory() as profile:
        tmp_png = Path(profile) / "shot.png"
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
               "--window-size=1366,900", f"--screenshot={tmp_png}", Path(page).resolve().as_uri()]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (subprocess.TimeoutExpired, OSError) as exc:
            log(f"Chromium screenshot failed: {exc}")
            return {"taken": False, "reason": str(exc)}
        console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        if not tmp_png.is_file():
            log(f"Chromium produced no screenshot (exit {proc.returncode})")
            return {"taken": False, "reason": f"chromium exit {proc.returncode}", "console": console}
        atomic_write_bytes(png, tmp_png.read_bytes())
    log(f"screenshot of the report's first screen: {png} ({len(console)} console messages)")
    return {"taken": True, "path": str(png), "console_messages": console}
