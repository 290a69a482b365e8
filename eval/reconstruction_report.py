"""What a reconstruction evaluation reports (:mod:`.reconstruction` runs it): per-image scores
summarised as means with bootstrap intervals (``summarise``), the best method chosen on one half
of the scored rows (``best_reconstruction``), the figure (originals, what the server saw, each
method's reconstructions; hand-over images, client outputs and ``inference``'s predictions), and
the text table (``format_reconstruction``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from collafuse_privacy.io import save_figure
from collafuse_privacy.numbers import fmt_interval
from collafuse_privacy.run.layout import RECONSTRUCTION_FIGURE
from collafuse_privacy.run.schemas import ReconstructionReport

from .harness import pyplot
from .stats import mean_ci

FIGURE = RECONSTRUCTION_FIGURE
SHOW = 8  # columns of the figure


def summarise(values, seed: int = 0) -> dict:
    return mean_ci(np.asarray(values, dtype=np.float64), seed=seed).to_dict()



def _strip(images: torch.Tensor, pad: int = 1) -> np.ndarray:
    """``[n, C, H, W]`` in [-1, 1] -> one ``[H, n (W + pad), 3]`` image in [0, 1] (white gaps)."""
    x = ((images.float().clamp(-1, 1) + 1) / 2).numpy()
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    n, _, H, W = x.shape
    out = np.ones((H, n * (W + pad) - pad, 3))
    for i in range(n):
        out[:, i * (W + pad) : i * (W + pad) + W] = x[i].transpose(1, 2, 0)
    return out


def write_figure(path: Path, rows: list[tuple[str, torch.Tensor]], title: str) -> None:
    """One labelled strip per ``(label, images [n, C, H, W])`` row, tiles upscaled (nearest)."""
    plt = pyplot()
    n = max(len(im) for _, im in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 + 0.9 * n, 0.95 * len(rows) + 0.5), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows):
        if len(images):
            ax.imshow(_strip(images), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)



def best_reconstruction(per_image: dict[str, dict], seed: int) -> Optional[dict]:
    """The best method on training images by SSIM, chosen on one half of the scored rows (seeded)
    and scored on the other: choosing on the scored rows would bias a best-of upwards."""
    per_image = {k: v for k, v in per_image.items() if v}
    if not per_image:
        return None
    n = len(next(iter(per_image.values()))["ssim"])
    if n < 4:
        return None
    perm = np.random.default_rng([seed, 0xBE57]).permutation(n)
    sel, ev = perm[: n // 2], perm[n // 2 :]
    name = max(per_image, key=lambda m: float(np.mean(per_image[m]["ssim"][sel])))
    return {"method": name, "selected_by": f"mean SSIM on half of the scored rows ({len(sel)}), scored on the "
            f"other half ({len(ev)})", "ssim": summarise(per_image[name]["ssim"][ev], seed),
            "psnr": summarise(per_image[name]["psnr"][ev], seed)}  # fmt: skip



def reconstruction_figure(run_dir, view, ds, ids, rows, ho_rows, ho_truth, outputs) -> None:
    """``figures/reconstruction.png``: the first :data:`SHOW` scored rows and each method's reconstructions of
    them; then hand-over images, the clients' outputs and ``inference``'s predictions."""
    show = rows[:SHOW]
    strips: list[tuple[str, torch.Tensor]] = []
    if len(show):
        strips += [("original", ds.images[ids[show]]), ("server saw", view.messages["x"][show].float())]
    for name, out in outputs.items():
        if out.source != "messages" or not len(show):
            continue
        pos = {r: j for j, r in enumerate(out.rows.tolist())}
        strips.append((name, out.images[[pos[r] for r in show.tolist()]]))
    inf = outputs.get("inference")
    if inf is not None and ho_truth is not None:
        # spread the shown hand-over rows over the clients
        pick = ho_rows[torch.linspace(0, len(ho_rows) - 1, min(SHOW, len(ho_rows))).round().long()]
        pos = {r: j for j, r in enumerate(inf.rows.tolist())}
        strips += [("hand-over h", view.handover["h"][pick].float()), ("client output", ho_truth[pick]),
                   ("inference", inf.images[[pos[r] for r in pick.tolist()]])]  # fmt: skip
    if not strips:
        return
    title = f"{view.protocol.name}, c = {view.meta.cut_ratio}, t_c = {view.t_c} of T = {view.timesteps}"
    if view.meta.fixed_noise:
        title += ", fixed noise"
    write_figure(Path(run_dir) / FIGURE, strips, title)



def format_reconstruction(result: ReconstructionReport) -> str:
    """A plain-text table of ``result`` (what :func:`run_reconstruction` returns / writes)."""
    head = (f"reconstruction attacks: {result.protocol}, c = {result.cut_ratio}, t_c = {result.t_c} "
            f"of T = {result.timesteps}" + (", fixed noise" if result.fixed_noise else ""))  # fmt: skip
    if not result.sent:
        return f"{head}\n{result.reason or 'nothing was sent to the server'}"
    lines = [head, f"training messages recorded: {result.n_rows}, scored: {result.n_scored} "
                   f"(cap {result.cap}); hand-over images scored: {result.n_handover}"]  # fmt: skip
    cols = ["method", "n", "MSE", "PSNR (dB)", "SSIM", "LPIPS", "identified (chance)", "s"]
    table = []
    notes = []
    f = lambda iv, d=3: fmt_interval(iv, f".{d}f")  # noqa: E731
    for name, m in result.methods.items():
        if not m.applicable:
            notes.append(f"  {name}: not applicable — {m.reason or ''}")
            continue
        ident = f(m.identification) + f" ({m.chance:.4f})"
        table.append([name + (" [inference]" if m.source == "handover" else ""), str(m.n), f(m.mse, 4), f(m.psnr, 1),
                      f(m.ssim), f(m.lpips), ident, f"{m.seconds:.1f}"])  # fmt: skip
        if m.linking is not None:
            lk = m.linking
            notes.append(f"  {name}: linked {lk.mean_linked:.1f} distinct releases per image on average "
                         f"(precision {lk.precision:.2f}; the client sent {lk.mean_true_releases:.1f})")  # fmt: skip
    if table:
        w = [max(len(r[i]) for r in table + [cols]) for i in range(len(cols))]
        lines.append("  ".join(c.ljust(w[i]) for i, c in enumerate(cols)))
        lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in table]
    lpips = {m.lpips_status for m in result.methods.values() if m.applicable and m.lpips is None}
    lines += notes
    lines += [f"  {s}" for s in sorted(x for x in lpips if x)]
    if result.figure:
        lines.append(f"figure: {result.figure}")
    return "\n".join(lines)
