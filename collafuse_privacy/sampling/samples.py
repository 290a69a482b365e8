"""What one ``sample`` leaves in the run (DESIGN.md §5): the clients' outputs, the server's
hand-over images, grids, their stats before the final clamp and ``samples/manifest.json``.

Owns :class:`SampleStats` (the divergence guard), :class:`SamplesManifest` (the unit of files
written last), :func:`write_samples` / :func:`read_samples`. The images come from
:class:`~.pipeline.CollaFusePipeline`; this module computes nothing random.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import sha256
from ..config import Config
from ..errors import UserError
from ..io import atomic_write_bytes, load_tensors, save_tensors
from ..protocol import Cut
from ..run.codec import read_json, write_json
from ..run.directory import RunDir
from ..run.layout import HANDOVER, HANDOVER_GRID, SAMPLES_GRID, SAMPLES_MANIFEST, samples_client, samples_file, samples_grid


@dataclass(frozen=True)
class SampleStats:
    """What the images looked like before the final clamp to [-1, 1] (a model that diverged
    hides behind it): per client the largest ``|x|``, the share of pixels outside [-1, 1] and the
    share beyond ``tolerance`` (what the last step's noise explains, :func:`overshoot_tolerance`),
    non-finite values anywhere, and the hand-over images' largest ``|h|`` and the share of their
    pixels beyond the range a hand-over image takes (``Cut.handover_range``, a 4-sigma excursion).
    Shares, not maxima, decide: an unclipped chain leaves a few stray pixels, a diverged one many."""

    max_abs: list[float]
    outside: list[float]
    non_finite: int
    handover_max_abs: Optional[float] = None
    handover_range: Optional[float] = None
    tolerance: Optional[float] = None
    beyond: Optional[list[float]] = None
    handover_beyond: Optional[float] = None  # share of hand-over pixels beyond handover_range

    def problem(self) -> Optional[str]:
        """Why these samples must not be scored, or None. A good chain overshoots [-1, 1] a little
        where the data sit at its edge (MNIST's background is -1); that is not refused."""
        if self.non_finite:
            return f"the samples hold {self.non_finite} non-finite values (NaN or inf): the models diverged"
        worst = max(self.max_abs) if self.max_abs else 0.0
        if self.beyond is not None:
            if self.beyond and max(self.beyond) > MAX_BEYOND_SHARE:
                return (f"{max(self.beyond):.1%} of the pixels lie beyond +-{self.tolerance:.3g} before the final clamp "
                        f"(max |x| = {worst:.3g}), more than the last step's noise explains: the models diverged "
                        "(a weakly trained model at small T: train longer, or sample with sample.clip=x0)")  # fmt: skip
        elif worst > 1.0 + 1e-4 and max(self.outside) > 0.01:  # a manifest written before the tolerance existed
            return (f"{max(self.outside):.1%} of the pixels leave [-1, 1] before the final clamp (max |x| = {worst:.3g}): "
                    "a metric of clamped pixels would describe the clamp, not the model")  # fmt: skip
        if self.handover_beyond is not None:
            if self.handover_beyond > MAX_BEYOND_SHARE:
                return (f"{self.handover_beyond:.1%} of the server's hand-over pixels lie beyond +-{self.handover_range:.3g}, "
                        f"the 4-sigma range a hand-over image takes (max |h| = {self.handover_max_abs:.3g}): the server's "
                        "model diverged (a weakly trained model at small T: train longer, or sample with sample.clip=x0)")  # fmt: skip
        elif self.handover_max_abs is not None and self.handover_max_abs > 2 * self.handover_range:  # an older manifest
            return (f"the server's hand-over images reach |h| = {self.handover_max_abs:.3g}, far outside the range a "
                    f"hand-over image takes (about {self.handover_range:.3g}): the server's model diverged "
                    "(a weakly trained model at small T: train longer, or sample with sample.clip=x0)")
        return None


# Samples are refused when more than this share of their pixels lie beyond the tolerance.
MAX_BEYOND_SHARE = 0.01


def overshoot_tolerance(cut: Cut) -> float:
    """``1 + 4 sqrt((1 - abar[0]) / abar[0])``: the last step (``t = 0``) maps ``x_0`` to ``x0_hat``
    by removing noise of standard deviation ``sqrt((1 - abar[0]) / abar[0])`` in ``x0``'s units;
    a pixel beyond a 4-sigma excursion of that noise outside [-1, 1] is not explained by it."""
    a0 = float(cut.abar[0])
    return 1.0 + 4.0 * ((1.0 - a0) / a0) ** 0.5


@dataclass(frozen=True)
class SamplesManifest:
    """``samples/manifest.json``, written last by ``sample``: which samples belong together
    (sha256 of every file of the unit, the hand-over images included) and their stats. Missing
    or not matching: the samples were cut off by an interruption."""

    step: int
    n: int
    seed: int
    files: dict[str, str]
    stats: SampleStats
    schema: int = 1


def read_samples(run_dir: str | Path) -> tuple[dict[int, torch.Tensor], SamplesManifest]:
    """The clients' samples ``{k: [n, C, H, W]}`` of the last complete ``sample``, checked."""
    run_dir = Path(run_dir)
    mpath = run_dir / SAMPLES_MANIFEST
    if not mpath.is_file():
        raise UserError(f"{run_dir} has no complete samples (samples/manifest.json is missing: never sampled, "
                        "or a `sample` was interrupted): run `collafuse-privacy sample`")  # fmt: skip
    manifest = read_json(mpath, SamplesManifest)
    for rel, digest in manifest.files.items():
        f = run_dir / rel
        if not f.is_file() or sha256(f) != digest:
            raise UserError(f"{f} does not belong to the last complete sample (an interrupted `sample`?): rerun sample")
    out = {samples_client(rel): load_tensors(run_dir / rel)["x0"]
           for rel in manifest.files if samples_client(rel) is not None}  # fmt: skip
    return out, manifest


def sample_stats(raw: torch.Tensor, handovers: Optional[torch.Tensor], cut: Cut) -> SampleStats:
    """:class:`SampleStats` of samples ``[K, n, ...]`` before their final clamp."""
    flat = raw.flatten(1).double()
    finite = torch.isfinite(flat)
    non_finite = int((~finite).sum()) + (int((~torch.isfinite(handovers)).sum()) if handovers is not None else 0)
    a = torch.where(finite, flat.abs(), torch.zeros_like(flat))
    tol = overshoot_tolerance(cut)
    return SampleStats(max_abs=[float(v) for v in a.amax(1)], outside=[float(v) for v in (a > 1).double().mean(1)],
                       non_finite=non_finite,
                       handover_max_abs=float(torch.nan_to_num(handovers.abs(), nan=0.0, posinf=0.0).max())
                       if handovers is not None else None,
                       handover_range=cut.handover_range if handovers is not None else None,
                       handover_beyond=float((torch.nan_to_num(handovers.abs(), nan=0.0, posinf=0.0) > cut.handover_range)
                                             .double().mean()) if handovers is not None else None,
                       tolerance=tol, beyond=[float(v) for v in (a > tol).double().mean(1)])  # fmt: skip


def save_grid(path: Path, images: torch.Tensor, nrow: int, min_tile: int = 48) -> None:
    """``images`` [N, C, H, W] in [-1, 1] -> PNG grid (written atomically).

    Small images are enlarged (nearest neighbour, whole factors) to at least
    ``min_tile`` pixels a side so that a 16x16 digit can be looked at.
    """
    import torch.nn.functional as F
    from torchvision.utils import save_image

    factor = max(1, -(-min_tile // images.shape[-1]))
    if factor > 1:
        images = F.interpolate(images.float(), scale_factor=factor, mode="nearest")
    buf = io.BytesIO()
    save_image((images + 1) / 2, buf, nrow=nrow, padding=2, pad_value=1.0, format="png")
    atomic_write_bytes(path, buf.getvalue())


def write_handovers(run_dir, handovers: torch.Tensor, step: int, cut: Cut) -> None:
    """The hand-over images the server produced ``[K, n, ...]`` into its view, with the client each went to."""
    K, n = handovers.shape[:2]
    save_tensors(RunDir(run_dir).handover_path,
                 {"h": handovers.reshape(-1, *handovers.shape[2:]), "client": torch.arange(K).repeat_interleave(n)},
                 {"step": str(step), "level": str(cut.handover_level)})  # fmt: skip


def write_samples(run_dir: Path, cfg: Config, raw: torch.Tensor, handovers: Optional[torch.Tensor], step: int, n: int,
                  seed: int) -> dict:  # fmt: skip
    """Write one complete sample: the clients' outputs ``raw`` [K, n, ...] (before the clamp), the
    server's hand-over images, grids, and ``samples/manifest.json`` last."""
    rd = RunDir(run_dir)
    cut = Cut.from_config(cfg)
    stats = sample_stats(raw, handovers, cut)
    samples = raw.clamp(-1, 1)
    # One unit: the manifest goes first and comes back last, naming every file of this sample.
    (run_dir / SAMPLES_MANIFEST).unlink(missing_ok=True)
    K = raw.shape[0]
    nrow = max(1, int(round(n**0.5)))
    files = []
    for k in range(K):
        save_tensors(run_dir / samples_file(k), {"x0": samples[k]}, {"step": str(step)})
        files.append(samples_file(k))
        save_grid(run_dir / samples_grid(k), samples[k], nrow)
    show = min(n, 16)
    save_grid(run_dir / SAMPLES_GRID, samples[:, :show].reshape(-1, *samples.shape[2:]), show)
    if handovers is not None:
        write_handovers(run_dir, handovers, step, cut)
        files.append(HANDOVER)
        if not cut.sends_clean:
            save_grid(run_dir / HANDOVER_GRID, handovers[:, :show].reshape(-1, *handovers.shape[2:]).clamp(-1, 1), show)
    else:
        rd.handover_path.unlink(missing_ok=True)
    write_json(run_dir / SAMPLES_MANIFEST,
               SamplesManifest(step=step, n=n, seed=seed, files={f: sha256(run_dir / f) for f in files}, stats=stats))
    return {"run_dir": str(run_dir), "n": n, "clients": K, "step": step, "t_c": cfg.t_c, "problem": stats.problem()}
