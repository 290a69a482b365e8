"""``collafuse-privacy attack --type reconstruction``: run reconstruction attacks, score them.

The attacks (``collafuse_privacy.attacks.reconstruction``) see only the server's view. Here,
and only here, their outputs meet ground truth:

* training messages: row ``i`` of ``server_view/train`` was an image with id
  ``ground_truth/train/...["image_id"][i]`` (same shards, same row order); its clean pixels
  come from the run's dataset. Rows are subsampled to ``cap`` (seeded) for speed; ``average``
  still links against every recorded row.
* inference (``inference``): hand-over row ``i`` of ``server_view/handover`` went to client
  ``client[i]`` as that client's ``j``-th sample, whose final image is row ``j`` of
  ``samples/client-K.safetensors`` (both written by one ``sample_run``).

Per image: MSE, PSNR, SSIM, LPIPS when its weights are cached offline (else ``null`` and the
reason, eval/similarity.py), and identification — whether the private image of that client
nearest (L2) to the reconstruction is the true source (members of the client for training
messages; the client's generated samples for inference), with the chance rate
``1 / candidates`` beside it. Summaries are means with bootstrap 95% intervals
(eval/stats.py). Writes ``metrics/reconstruction.json`` and ``figures/reconstruction.png``
(originals, what the server saw, one row per method; then hand-over images, the clients'
outputs and the ``inference`` predictions).

``metrics/reconstruction.json`` (Interval = ``{"value", "lo", "hi", "level", "n_boot"}``, infinite
numbers as the string ``"inf"``)::

    {"protocol", "cut_ratio", "t_c", "timesteps", "fixed_noise", "sent": bool,
     "reason": str (only when nothing was sent, c = 1; then no numbers at all),
     "n_rows": recorded training messages, "cap", "seed", "n_scored", "n_handover",
     "methods": {name: {"applicable": bool, "reason": str (when not applicable),
                        "source": "messages" | "handover", "n", "mse", "psnr", "ssim": Interval,
                        "lpips": Interval | null, "lpips_status": str,
                        "identification": Interval, "chance": float, "seconds": float,
                        "info": {method diagnostics},
                        "linking": {"precision", "mean_linked", "mean_true_releases"} (average)}},
     "figure": "figures/reconstruction.png" | null}
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from collafuse_privacy.attacks.base import check_family_options
from collafuse_privacy.checkpoint import sha256
from collafuse_privacy.attacks.reconstruction import FAMILY, NotApplicable, make
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import check_writable, save_figure
from collafuse_privacy.linalg import nearest
from collafuse_privacy.lock import locks_run
from collafuse_privacy.numbers import fmt_interval, to_json
from collafuse_privacy.party import resolve_device
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import FIGURES, METRICS_DIR, RECONSTRUCTION_FIGURE, SAMPLES, client_name
from collafuse_privacy.run.schemas import ReconstructionReport
from collafuse_privacy.sampling import read_samples
from collafuse_privacy.typed import Schema, from_data
from collafuse_privacy.view import ServerView

from .ground_truth import load_ground_truth, message_image_ids
from .similarity import image_similarity
from .stats import mean_ci

DEFAULT_CAP = 512
FIGURE = RECONSTRUCTION_FIGURE
SHOW = 8  # columns of the figure


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------


def client_outputs(run_dir: Path, view: ServerView) -> tuple[Optional[torch.Tensor], str]:
    """The client's final image for every hand-over row ``[N_h, C, H, W]``, or ``(None, reason)``.

    Both come from the last complete ``sample`` (``samples/manifest.json`` names the hand-over
    file too): samples of one run and hand-over images of another never meet."""
    try:
        samples, manifest = read_samples(run_dir)
    except UserError as exc:
        return None, str(exc)
    if manifest.stats.problem():
        return None, manifest.stats.problem()
    client = view.handover["client"].long()
    out = torch.empty_like(view.handover["h"], dtype=torch.float32)
    for k in torch.unique(client).tolist():
        if k not in samples:
            return None, f"no samples of client {k} to score inference against"
        x0 = samples[k]
        pos = torch.nonzero(client == k).flatten()
        if len(x0) != len(pos):
            return None, f"{SAMPLES}/{client_name(k)} holds {len(x0)} images for {len(pos)} hand-over images (sampled apart?)"
        out[pos] = x0.float()
    return out, ""


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def nearest_is_true(recon: torch.Tensor, candidates: torch.Tensor, true_index: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: is ``candidates[true_index[i]]`` the candidate nearest (L2) to ``recon[i]``?

    ``recon`` [n, C, H, W], ``candidates`` [M, C, H, W]; ``true_index`` -1 never counts as found.
    """
    if len(recon) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return nearest(recon.flatten(1), candidates.flatten(1))[1] == true_index


def summarise(values, seed: int = 0) -> dict:
    return mean_ci(np.asarray(values, dtype=np.float64), seed=seed).to_dict()


def score_method(recon: torch.Tensor, truth: torch.Tensor, found: torch.Tensor, chance: np.ndarray,
                 device: str = "cpu", seed: int = 0, per_image: Optional[dict] = None) -> dict:  # fmt: skip
    """Summaries of one method: per-image scores of ``recon`` vs ``truth`` [n, C, H, W]
    (``per_image``, if given, receives the per-image SSIM and PSNR)."""
    sim = image_similarity(recon, truth, lpips_net="alex", device=device)
    if per_image is not None:
        per_image.update(ssim=sim.ssim.numpy(), psnr=sim.psnr.numpy())
    return {
        "n": int(len(recon)),
        "mse": summarise(sim.mse.numpy(), seed),
        "psnr": summarise(sim.psnr.numpy(), seed),
        "ssim": summarise(sim.ssim.numpy(), seed),
        "lpips": summarise(sim.lpips.numpy(), seed) if sim.lpips is not None else None,
        "lpips_status": sim.lpips_note,
        "identification": summarise(found.float().numpy(), seed),
        "chance": float(np.mean(chance)) if len(chance) else float("nan"),
    }


def _subsample(n: int, cap: int, seed: int) -> torch.Tensor:
    if n <= cap:
        return torch.arange(n)
    rng = np.random.default_rng([seed, 0x2EC0])
    return torch.from_numpy(np.sort(rng.choice(n, size=cap, replace=False))).long()


def _linking(groups: list[torch.Tensor], rows: torch.Tensor, ids: torch.Tensor, client: torch.Tensor) -> dict:
    """Ground-truth quality of linked groups: precision (share of linked distinct releases that are
    the anchor's image) and how many releases of that image the client sent in the view."""
    prec, true_rel, size = [], [], []
    for g, r in zip(groups, rows.tolist()):
        same = ids[g] == ids[r]
        prec.append(float(same.float().mean()))
        size.append(len(g))
        true_rel.append(int(((ids == ids[r]) & (client == client[r])).sum()))
    return {"precision": float(np.mean(prec)) if prec else float("nan"),
            "mean_linked": float(np.mean(size)) if size else 0.0,
            "mean_true_releases": float(np.mean(true_rel)) if true_rel else 0.0}  # fmt: skip


# ---------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


@locks_run
def run_reconstruction(
    run_dir: str | Path,
    methods: Optional[list[str]] = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
    cap: int = DEFAULT_CAP,
    seed: int = 0,
    options: Optional[dict[str, dict]] = None,
    figure: bool = True,
) -> ReconstructionReport:
    """Run reconstruction ``methods`` (default: all registered) on the run's server view and score them.

    ``cap``: training messages scored at most (seeded subsample; hand-over rows too).
    ``options``: ``{method: {option: value}}`` passed to the method's constructor (e.g. a smaller
    ``steps`` in tests). ``seed`` seeds the subsample, the attacks' training and the bootstrap.
    Writes ``metrics/reconstruction.json`` (schema in the module docstring) and, unless
    ``figure=False``, ``figures/reconstruction.png``. Returns the JSON's content.
    """
    rd = RunDir(run_dir)
    run_dir = rd.path
    names = FAMILY.resolve(methods)  # UserError listing the known names
    options = dict(options or {})
    check_family_options(FAMILY, options, names)
    if cap < 1:
        raise UserError(f"cap must be at least 1, got {cap}")
    dev = str(resolve_device(device))
    for folder in (METRICS_DIR, FIGURES):  # before any computation: a read-only run fails now, naming the folder
        check_writable(run_dir / folder)
    view = ServerView.load(run_dir)
    meta = view.meta
    result: dict = {
        "protocol": view.protocol.name, "cut_ratio": meta.cut_ratio, "t_c": view.t_c, "timesteps": view.timesteps,
        "fixed_noise": meta.fixed_noise, "sent": not view.cut.sends_nothing,
        "n_rows": len(view), "cap": int(cap), "seed": int(seed),
    }  # fmt: skip
    if not result["sent"]:
        reason = "nothing was sent: c = 1 (t_c = T), clients run every denoising step locally"
        result.update(reason=reason, methods={m: {"applicable": False, "reason": reason} for m in names}, figure=None)
        return _write(rd, result, log, reason)

    _, splits, ds = load_ground_truth(run_dir)
    rows = _subsample(len(view), cap, seed)
    result["n_scored"] = int(len(rows))
    ids = message_image_ids(run_dir, len(view)) if len(view) else torch.zeros(0, dtype=torch.long)
    client = view.messages["client"].long() if len(view) else torch.zeros(0, dtype=torch.long)
    truth = ds.images[ids[rows]] if len(rows) else None
    members = [torch.tensor(m, dtype=torch.long) for m in splits.members]
    # identification candidates: the client's own members; true index = position of the source among them
    true_idx = torch.full((len(rows),), -1, dtype=torch.long)
    for j, r in enumerate(rows.tolist()):
        hit = torch.nonzero(members[int(client[r])] == ids[r]).flatten()
        if len(hit):
            true_idx[j] = hit[0]
    chance_rows = np.array([1.0 / len(members[int(client[r])]) for r in rows.tolist()])

    ho_rows = _subsample(len(view.handover["h"]), cap, seed) if view.handover else torch.zeros(0, dtype=torch.long)
    ho_truth, ho_reason = (client_outputs(run_dir, view) if view.handover else (None, "no hand-over images"))
    result["n_handover"] = int(len(ho_rows))

    outputs: dict[str, object] = {}
    per_image: dict[str, dict] = {}  # method -> per-image SSIM / PSNR of the scored training rows, in `rows` order
    result["methods"] = {}
    result["record"] = to_json(dataclasses.asdict(view.record)) if view.record is not None else None
    for name in names:
        attack = make(name, device=dev, seed=seed, **options.get(name, {}))
        t0 = time.perf_counter()
        try:
            attack.fit(view)
            out = attack.reconstruct(view, rows if attack.source == "messages" else ho_rows)
        except NotApplicable as e:
            result["methods"][name] = {"applicable": False, "reason": e.reason}
            log(f"{name}: not applicable ({e.reason})")
            continue
        seconds = time.perf_counter() - t0
        if out.source == "messages":
            pos = {r: j for j, r in enumerate(rows.tolist())}
            sel = torch.tensor([pos[r] for r in out.rows.tolist()], dtype=torch.long)
            entry = {"applicable": True, "source": "messages"}
            found = torch.zeros(len(out.rows), dtype=torch.bool)
            guess = out.identify  # a sample, where the method samples; its posterior mean is scored below
            for k in torch.unique(client[out.rows]).tolist():
                m = client[out.rows] == k
                found[m] = nearest_is_true(guess[m], ds.images[members[k]], true_idx[sel[m]])
            scores: dict = {}
            entry.update(score_method(out.images, truth[sel], found, chance_rows[sel.numpy()], dev, seed, scores))
            order = torch.argsort(sel)
            per_image[name] = {k: v[order.numpy()] for k, v in scores.items()} if len(sel) == len(rows) else {}
            if out.groups is not None:
                entry["linking"] = _linking(out.groups, out.rows, ids, client)
        else:
            if ho_truth is None:
                result["methods"][name] = {"applicable": False, "reason": f"not scored: {ho_reason}"}
                log(f"{name}: not scored ({ho_reason})")
                continue
            hc = view.handover["client"].long()
            found = torch.zeros(len(out.rows), dtype=torch.bool)
            chance = np.zeros(len(out.rows))
            for k in torch.unique(hc[out.rows]).tolist():
                m = hc[out.rows] == k
                cand_rows = torch.nonzero(hc == k).flatten()  # the client's samples, in order
                where = {int(r): j for j, r in enumerate(cand_rows.tolist())}
                tidx = torch.tensor([where[int(r)] for r in out.rows[m].tolist()], dtype=torch.long)
                found[m] = nearest_is_true(out.identify[m], ho_truth[cand_rows], tidx)
                chance[m.numpy()] = 1.0 / len(cand_rows)
            entry = {"applicable": True, "source": "handover"}
            entry.update(score_method(out.images, ho_truth[out.rows], found, chance, dev, seed))
        entry["seconds"] = round(seconds, 3)
        entry["info"] = out.info
        result["methods"][name] = entry
        outputs[name] = out
        log(f"{name}: {seconds:.1f}s, PSNR {fmt_interval(entry['psnr'], '.4g')}, SSIM {fmt_interval(entry['ssim'], '.4g')}")

    result["best"] = best_reconstruction(per_image, seed)
    result["figure"] = None
    if figure:
        _figure(run_dir, view, ds, ids, rows, ho_rows, ho_truth, outputs)
        if (run_dir / FIGURE).is_file():
            result["figure"] = FIGURE
            result["files"] = {FIGURE: sha256(run_dir / FIGURE)}  # the json comes last and names its figure
    return _write(rd, result, log)


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


def _write(rd: RunDir, result: dict, log, say: str = "") -> ReconstructionReport:
    schema = Schema(noun="key", where=str(rd.metrics_path("reconstruction")), json_numbers=True)
    report = from_data(ReconstructionReport, to_json(result), schema)
    rd.write_metrics("reconstruction", report)
    if say:
        log(say)
    return report


def _figure(run_dir, view, ds, ids, rows, ho_rows, ho_truth, outputs) -> None:
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
