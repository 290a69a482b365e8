"""Image quality (FID, KID) and the paper's disclosure figures.

FID (Heusel et al. 2017) and KID (Binkowski et al. 2018, unbiased MMD with the cubic
polynomial kernel ``k(x, y) = (x.y / D + 1)^3`` averaged over random subsets) come from
torchmetrics, fed by a :mod:`collafuse_privacy.eval.features` extractor; every result
names its extractor, and results from different extractors must not share a table.
Images are ``[N, C, H, W]`` with pixels in ``[-1, 1]``.

The disclosure figures (CollaFuse, Allmendinger et al., arXiv 2406.14429): KID between
what the server sees and a client's data, and the mean pixel MSE over all (server image,
client image) pairs, in the images' own [-1, 1] units. The authors' published logs
(``collafuse_imagen``, ``results/pixel_comparison_mse``) show values near 1.0 for noisy
images, which fits [-1, 1] pixels; their computing code is not public, so this scale is
our reading, not a copy.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .features import FeatureExtractor, extractor_device

# torchmetrics' default KID subset size (Binkowski et al. use 1000 as well).
DEFAULT_KID_SUBSET_SIZE = 1000
DEFAULT_KID_SUBSETS = 100


@dataclass(frozen=True)
class FIDResult:
    """Frechet distance between Gaussian fits of real and generated features."""

    fid: float
    n_real: int
    n_fake: int
    extractor: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KIDResult:
    """KID mean and (population) std over ``subsets`` random subsets of ``subset_size`` per set."""

    kid_mean: float
    kid_std: float
    subsets: int
    subset_size: int
    n_real: int
    n_fake: int
    extractor: str
    note: str  # "" or why subset_size differs from the requested one

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DisclosureResult:
    """The paper's disclosure figures for one client: KID(server images, client images) and pixel MSE."""

    kid: KIDResult
    pixel_mse: float  # mean over all N_server x N_client pairs of the per-pixel MSE, in [-1, 1] units
    n_server: int
    n_client: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Features:
    """Features of one image set, extracted once (``extract``) and reused by every FID/KID
    it enters: ``batches`` float64 ``[b_i, D]`` in extraction order (torchmetrics' sums are
    accumulated batch by batch, so keeping them keeps every figure bit-identical)."""

    batches: tuple
    extractor: str
    num_features: int

    def __len__(self) -> int:
        return sum(len(b) for b in self.batches)

    @property
    def device(self) -> torch.device:
        return self.batches[0].device if self.batches else torch.device("cpu")

    @staticmethod
    def cat(parts: list["Features"], batch_size: int = 256) -> "Features":
        """One set made of several (e.g. every client's held-out images), re-batched."""
        allf = torch.cat([b for p in parts for b in p.batches])
        return Features(tuple(allf[i : i + batch_size] for i in range(0, len(allf), batch_size)), parts[0].extractor,
                        parts[0].num_features)  # fmt: skip


def extract(images: torch.Tensor, extractor: FeatureExtractor, batch_size: int = 256) -> Features:
    """Features of ``images`` [N, C, H, W] in [-1, 1], in batches of ``batch_size`` on the extractor's device."""
    if isinstance(images, Features):
        return images
    device = extractor_device(extractor)
    with torch.no_grad():
        batches = tuple(extractor(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size))
    return Features(batches, extractor.name, extractor.num_features)


class _Given(torch.nn.Module):
    """Hands torchmetrics features that were extracted already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _feed(metric, feats: Features, real: bool) -> None:
    for b in feats.batches:
        metric.update(b, real=real)


def compute_fid(fake, real, extractor: FeatureExtractor, batch_size: int = 256) -> FIDResult:
    """FID of ``fake`` against ``real`` (images [N, C, H, W] in [-1, 1], or their :class:`Features`), N >= 2 each.

    Computed in float64 (the extractors return float64 features, and torchmetrics keeps
    the result in the features' dtype). With fewer images than feature dimensions the
    covariances are singular and FID is biased upwards; prefer KID for small sets.
    """
    if len(fake) < 2 or len(real) < 2:
        raise ValueError(f"FID needs at least 2 images per set (got {len(fake)} generated, {len(real)} real)")
    fake, real = extract(fake, extractor, batch_size), extract(real, extractor, batch_size)
    metric = FrechetInceptionDistance(feature=_Given(extractor.num_features)).to(real.device)
    with torch.no_grad():
        _feed(metric, real, True)
        _feed(metric, fake, False)
        value = float(metric.compute())
    return FIDResult(fid=value, n_real=len(real), n_fake=len(fake), extractor=extractor.name)


def compute_kid(
    fake,
    real,
    extractor: FeatureExtractor,
    subsets: int = DEFAULT_KID_SUBSETS,
    subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    seed: int = 0,
    batch_size: int = 256,
) -> KIDResult:
    """KID of ``fake`` against ``real`` (images [N, C, H, W] in [-1, 1], or their :class:`Features`).

    ``subset_size`` is lowered to ``min(N_f, N_r)`` when either set is smaller (the
    result's ``note`` says so); at least 2 images per set are needed. torchmetrics draws
    the subsets with the global torch RNG; we fork it and seed it with ``seed``, so the
    result is reproducible and the caller's RNG state is untouched.
    """
    n_min = min(len(fake), len(real))
    if n_min < 2:
        raise ValueError(f"KID needs at least 2 images per set (got {len(fake)} generated, {len(real)} real)")
    size = min(subset_size, n_min)
    note = ""
    if size < subset_size:
        note = f"KID subset size lowered from {subset_size} to {size} (the smaller set has {n_min} images)"
    fake, real = extract(fake, extractor, batch_size), extract(real, extractor, batch_size)
    device = real.device
    with warnings.catch_warnings():
        # Its "saves all features in buffer" warning: that is how KID works, and our sets are small.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Given(extractor.num_features), subsets=subsets,
                                         subset_size=size).to(device)  # fmt: skip
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.no_grad():
        _feed(metric, real, True)
        _feed(metric, fake, False)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return KIDResult(
        kid_mean=float(mean), kid_std=float(std), subsets=subsets, subset_size=size,
        n_real=len(real), n_fake=len(fake), extractor=extractor.name, note=note,
    )  # fmt: skip


def pairwise_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel MSE between every pair: ``a`` [N_a, ...], ``b`` [N_b, ...] -> [N_a, N_b] float64."""
    from collafuse_privacy.linalg import pairwise_sqdist

    return pairwise_sqdist(a, b) / a[0].numel()


def mean_pairwise_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean of :func:`pairwise_mse` over all ``N_a x N_b`` pairs, without forming the matrix.

    Averaging the same expression over i and j gives ``mean|a|^2 + mean|b|^2 - 2 mean(a).mean(b)``
    (divided by D), which is exact and needs O(N) memory: the server may hold hundreds of
    thousands of hand-over images.
    """
    a2, b2 = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"image shapes differ: {tuple(a.shape[1:])} vs {tuple(b.shape[1:])}")
    if len(a2) == 0 or len(b2) == 0:
        raise ValueError("mean pairwise MSE needs at least one image per set")
    total = (a2 * a2).sum(1).mean() + (b2 * b2).sum(1).mean() - 2.0 * a2.mean(0) @ b2.mean(0)
    return float(total.clamp_min(0)) / a2.shape[1]


def disclosure_figures(
    server_images: torch.Tensor,
    client_images: torch.Tensor,
    extractor: FeatureExtractor,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    seed: int = 0,
) -> DisclosureResult:
    """The paper's figures: KID(server images vs client images) and mean pixel MSE over all pairs.

    ``server_images`` [N_s, C, H, W]: what the server sees (hand-over images in training
    and at inference; noisy, so values may leave [-1, 1] and are used as they are).
    ``client_images`` [N_c, C, H, W] in [-1, 1]: the client's data. A low KID / MSE
    means the server's images look like the client's data (more disclosure).
    """
    kid = compute_kid(server_images, client_images, extractor, kid_subsets, kid_subset_size, seed)
    mse = mean_pairwise_mse(server_images, client_images)
    return DisclosureResult(kid=kid, pixel_mse=mse, n_server=len(server_images), n_client=len(client_images))
