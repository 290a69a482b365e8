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

This module links the rows to their ground truth and runs the attacks (through :mod:`.harness`);
:mod:`.reconstruction_report` holds the summaries, the best-method choice, the figure and the
text table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from collafuse_privacy.attacks.reconstruction import FAMILY, make
from collafuse_privacy.errors import UserError
from collafuse_privacy.linalg import nearest
from collafuse_privacy.lock import locks_run
from collafuse_privacy.numbers import fmt_interval, to_json
from collafuse_privacy.party import resolve_device
from collafuse_privacy.run.layout import SAMPLES, client_name
from collafuse_privacy.run.schemas import ReconstructionReport
from collafuse_privacy.sampling import read_samples
from collafuse_privacy.typed import Schema, from_data
from collafuse_privacy.view import ServerView

from .harness import ScoredRun, attempts, checked_methods
from .reconstruction_report import (FIGURE, SHOW, best_reconstruction, format_reconstruction,  # noqa: F401
                                    reconstruction_figure, summarise, write_figure)  # fmt: skip
from .similarity import image_similarity

DEFAULT_CAP = 512


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


@dataclass(frozen=True)
class _Truth:
    """What the scored rows really were (never shown to an attack).

    ``rows`` the scored training rows (a seeded subsample of the view's), ``ids`` / ``client`` the
    image id and sender of every recorded row, ``images`` the clean source of each scored row,
    ``members`` each client's member ids (the identification candidates), ``true_idx`` the source's
    position among its client's members (-1: not a member), ``chance`` 1 / candidates per scored
    row; ``ho_rows`` the scored hand-over rows and ``ho_truth`` the clients' outputs for every
    hand-over row (None, with ``ho_reason``, when they cannot be scored)."""

    ds: object
    rows: torch.Tensor
    ids: torch.Tensor
    client: torch.Tensor
    images: Optional[torch.Tensor]
    members: list[torch.Tensor]
    true_idx: torch.Tensor
    chance: np.ndarray
    ho_rows: torch.Tensor
    ho_truth: Optional[torch.Tensor]
    ho_reason: str


def _ground_truth(run: ScoredRun, view: ServerView, cap: int, seed: int) -> _Truth:
    _, splits, ds = run.ground_truth()
    rows = _subsample(len(view), cap, seed)
    ids = run.image_ids(len(view)) if len(view) else torch.zeros(0, dtype=torch.long)
    client = view.messages["client"].long() if len(view) else torch.zeros(0, dtype=torch.long)
    members = [torch.tensor(m, dtype=torch.long) for m in splits.members]
    # identification candidates: the client's own members; true index = position of the source among them
    true_idx = torch.full((len(rows),), -1, dtype=torch.long)
    for j, r in enumerate(rows.tolist()):
        hit = torch.nonzero(members[int(client[r])] == ids[r]).flatten()
        if len(hit):
            true_idx[j] = hit[0]
    chance = np.array([1.0 / len(members[int(client[r])]) for r in rows.tolist()])
    ho_rows = _subsample(len(view.handover["h"]), cap, seed) if view.handover else torch.zeros(0, dtype=torch.long)
    ho_truth, ho_reason = (client_outputs(run.path, view) if view.handover else (None, "no hand-over images"))
    return _Truth(ds, rows, ids, client, ds.images[ids[rows]] if len(rows) else None, members, true_idx, chance,
                  ho_rows, ho_truth, ho_reason)  # fmt: skip


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



def _score_messages(out, t: _Truth, dev: str, seed: int) -> tuple[dict, dict]:
    """``(entry, per-image SSIM / PSNR in the order of t.rows)`` of a method that reconstructs training
    messages (per-image scores empty unless it reconstructed every scored row)."""
    pos = {r: j for j, r in enumerate(t.rows.tolist())}
    sel = torch.tensor([pos[r] for r in out.rows.tolist()], dtype=torch.long)
    entry = {"applicable": True, "source": "messages"}
    found = torch.zeros(len(out.rows), dtype=torch.bool)
    guess = out.identify  # a sample, where the method samples; its posterior mean is scored below
    for k in torch.unique(t.client[out.rows]).tolist():
        m = t.client[out.rows] == k
        found[m] = nearest_is_true(guess[m], t.ds.images[t.members[k]], t.true_idx[sel[m]])
    scores: dict = {}
    entry.update(score_method(out.images, t.images[sel], found, t.chance[sel.numpy()], dev, seed, scores))
    order = torch.argsort(sel)
    per_image = {k: v[order.numpy()] for k, v in scores.items()} if len(sel) == len(t.rows) else {}
    if out.groups is not None:
        entry["linking"] = _linking(out.groups, out.rows, t.ids, t.client)
    return entry, per_image


def _score_handover(out, view: ServerView, ho_truth: torch.Tensor, dev: str, seed: int) -> dict:
    """The entry of ``inference``: its predictions against the clients' outputs, identified among the
    same client's samples."""
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
    return entry


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
    run = ScoredRun(run_dir)
    names, options = checked_methods(FAMILY, methods, options, cap)  # UserError listing the known names
    dev = str(resolve_device(device))
    run.check_writable()  # before any computation: a read-only run fails now, naming the folder
    view = run.view()
    meta = view.meta
    result: dict = {
        "protocol": view.protocol.name, "cut_ratio": meta.cut_ratio, "t_c": view.t_c, "timesteps": view.timesteps,
        "fixed_noise": meta.fixed_noise, "sent": view.protocol.no_image_rows() is None,
        "n_rows": len(view), "cap": int(cap), "seed": int(seed),
    }  # fmt: skip
    if not result["sent"]:
        reason = view.protocol.no_image_rows()
        result.update(reason=reason, methods={m: {"applicable": False, "reason": reason} for m in names}, figure=None)
        return _write(run, result, log, reason)
    t = _ground_truth(run, view, cap, seed)
    result.update(n_scored=int(len(t.rows)), n_handover=int(len(t.ho_rows)), methods={},
                  record=to_json(dataclasses.asdict(view.record)) if view.record is not None else None)  # fmt: skip
    outputs, per_image = _attack(view, names, options, t, dev, seed, result["methods"], log)
    result["best"] = best_reconstruction(per_image, seed)
    result["figure"] = None
    if figure:
        reconstruction_figure(run.path, view, t.ds, t.ids, t.rows, t.ho_rows, t.ho_truth, outputs)
        if (run.path / FIGURE).is_file():
            result["figure"] = FIGURE
            result["files"] = run.digests([FIGURE])  # the json comes last and names its figure
    return _write(run, result, log)


def _attack(view: ServerView, names: list[str], options: dict, t: _Truth, dev: str, seed: int, entries: dict,
            log: Callable[[str], None]) -> tuple[dict, dict]:  # fmt: skip
    """Fit and run each method, scoring it into ``entries``; returns ``(outputs, per-image scores)``
    of the methods scored."""
    outputs: dict[str, object] = {}
    per_image: dict[str, dict] = {}  # method -> per-image SSIM / PSNR of the scored training rows, in `rows` order

    def reconstruct(name: str):
        attack = make(name, device=dev, seed=seed, **options.get(name, {}))
        attack.fit(view)
        return attack.reconstruct(view, t.rows if attack.source == "messages" else t.ho_rows)

    for a in attempts(names, reconstruct, log):
        out = a.output
        if not a.applicable:
            entries[a.name] = {"applicable": False, "reason": a.reason}
            continue
        if out.source == "messages":
            entry, per_image[a.name] = _score_messages(out, t, dev, seed)
        elif t.ho_truth is None:
            entries[a.name] = {"applicable": False, "reason": f"not scored: {t.ho_reason}"}
            log(f"{a.name}: not scored ({t.ho_reason})")
            continue
        else:
            entry = _score_handover(out, view, t.ho_truth, dev, seed)
        entry["seconds"] = round(a.seconds, 3)
        entry["info"] = out.info
        entries[a.name] = entry
        outputs[a.name] = out
        log(f"{a.name}: {a.seconds:.1f}s, PSNR {fmt_interval(entry['psnr'], '.4g')}, "
            f"SSIM {fmt_interval(entry['ssim'], '.4g')}")  # fmt: skip
    return outputs, per_image


def _write(run: ScoredRun, result: dict, log, say: str = "") -> ReconstructionReport:
    schema = Schema(noun="key", where=str(run.rd.metrics_path("reconstruction")), json_numbers=True)
    report = run.write("reconstruction", from_data(ReconstructionReport, to_json(result), schema))
    if say:
        log(say)
    return report
