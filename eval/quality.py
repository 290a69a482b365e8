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

Intervals (:func:`fid_interval`, :func:`kid_interval`): 95% bootstrap over samples. Each
replicate resamples the generated features and the real ones, independently, with
replacement, from a seeded ``torch.Generator``, and recomputes the statistic in closed
form from count-weighted moments (FID) or kernel sums (KID), batched over replicates.
Resampling with replacement repeats images, which inflates both figures (fewer distinct
images: the FID of 128 real images against 300 others is not 0 but a few units, and a
bootstrap set of 128 holds about 81 distinct ones); so the replicates' percentiles sit
above the estimate. We keep their spread, not their location: the interval is
``value + (q_2.5% - median, q_97.5% - median)`` (FID's lower end clipped at 0), i.e. where
the figure would fall on another draw of as many images. That is why a model's figure is
read beside the floor (real members against held-out images, same n), never against 0.
KID's point value is torchmetrics' (an average over random subsets); its replicates are
the unbiased MMD^2 over the whole resampled sets, whose spread is that of the data.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from collafuse_privacy.linalg import pairwise_sqdist
from collafuse_privacy.numbers import Interval

from .extractor import FeatureExtractor, extractor_device, one_thread

# torchmetrics' default KID subset size (Binkowski et al. use 1000 as well).
DEFAULT_KID_SUBSET_SIZE = 1000
DEFAULT_KID_SUBSETS = 100
# Bootstrap replicates behind every FID / KID interval, and their level.
DEFAULT_BOOTSTRAP = 500
LEVEL = 0.95
# How tables print KID: unscaled, and labelled so. Papers print Inception KID x 10^3 (raw values
# near 0.01); in the offline classifier's 32 features raw KID is ~1-100, so one scale would not
# suit both, and a label that says "raw" cannot be misread as x 10^3.
KID_SCALE = 1.0
KID_UNIT = "KID (raw MMD^2)"


@dataclass(frozen=True)
class FIDResult:
    """Frechet distance between Gaussian fits of real and generated features."""

    fid: float
    n_real: int
    n_fake: int
    extractor: str
    ci: Optional[Interval] = None  # bootstrap interval over samples (module docstring); None when n_boot = 0

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
    ci: Optional[Interval] = None  # bootstrap interval over samples (module docstring); None when n_boot = 0

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


def compute_fid(fake, real, extractor: FeatureExtractor, batch_size: int = 256, n_boot: int = DEFAULT_BOOTSTRAP,
                seed: int = 0) -> FIDResult:  # fmt: skip
    """FID of ``fake`` against ``real`` (images [N, C, H, W] in [-1, 1], or their :class:`Features`), N >= 2 each.

    Computed in float64 (the extractors return float64 features, and torchmetrics keeps
    the result in the features' dtype). With fewer images than feature dimensions the
    covariances are singular and FID is biased upwards; prefer KID for small sets.
    ``n_boot`` replicates (0: none) give ``ci`` (:func:`fid_interval`, seeded with ``seed``).
    """
    if len(fake) < 2 or len(real) < 2:
        raise ValueError(f"FID needs at least 2 images per set (got {len(fake)} generated, {len(real)} real)")
    fake, real = extract(fake, extractor, batch_size), extract(real, extractor, batch_size)
    metric = FrechetInceptionDistance(feature=_Given(extractor.num_features)).to(real.device)
    with torch.no_grad():
        _feed(metric, real, True)
        _feed(metric, fake, False)
        value = float(metric.compute())
    ci = fid_interval(value, fake, real, n_boot, seed) if n_boot > 0 else None
    return FIDResult(fid=value, n_real=len(real), n_fake=len(fake), extractor=extractor.name, ci=ci)


def compute_kid(
    fake,
    real,
    extractor: FeatureExtractor,
    subsets: int = DEFAULT_KID_SUBSETS,
    subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    seed: int = 0,
    batch_size: int = 256,
    n_boot: int = DEFAULT_BOOTSTRAP,
) -> KIDResult:
    """KID of ``fake`` against ``real`` (images [N, C, H, W] in [-1, 1], or their :class:`Features`).

    ``subset_size`` is lowered to ``min(N_f, N_r)`` when either set is smaller (the
    result's ``note`` says so); at least 2 images per set are needed. torchmetrics draws
    the subsets with the global torch RNG; we fork it and seed it with ``seed``, so the
    result is reproducible and the caller's RNG state is untouched. ``n_boot`` replicates
    (0: none) give ``ci`` (:func:`kid_interval`).
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
    ci = kid_interval(float(mean), fake, real, n_boot, seed) if n_boot > 0 else None
    return KIDResult(
        kid_mean=float(mean), kid_std=float(std), subsets=subsets, subset_size=size,
        n_real=len(real), n_fake=len(fake), extractor=extractor.name, note=note, ci=ci,
    )  # fmt: skip


# ---------------------------------------------------------------------------
# Bootstrap intervals over samples
# ---------------------------------------------------------------------------


def _rows(x) -> torch.Tensor:
    """Features [N, D] float64 on the CPU from :class:`Features` or a tensor."""
    if isinstance(x, Features):
        return torch.cat([b.double().cpu() for b in x.batches]) if x.batches else torch.empty(0, x.num_features,
                                                                                               dtype=torch.float64)
    return x.double().cpu()


def resample_counts(n: int, n_boot: int, g: torch.Generator) -> torch.Tensor:
    """``[n_boot, n]`` float64: how often each of ``n`` rows is drawn in each resample with replacement."""
    idx = torch.randint(n, (n_boot, n), generator=g)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))


def _weighted_moments(f: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[B, D]`` and unbiased covariance ``[B, D, D]`` of ``f`` [n, D] resampled with counts ``c`` [B, n]."""
    n = f.shape[0]
    f = f - f.mean(0)  # covariance is shift-invariant; centring first keeps float64 sums exact enough
    mu = c @ f / n
    second = torch.bmm((c[:, :, None] * f).transpose(1, 2), f.expand(len(c), -1, -1)) / n
    cov = (second - mu[:, :, None] * mu[:, None, :]) * (n / (n - 1))
    return mu, cov


def frechet_distance(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """FID of Gaussian fits ``(mu [..., D], sigma [..., D, D])``, batched: torchmetrics' formula, with
    ``tr sqrt(s1 s2) = sum sqrt(eig(A' s2 A))`` for any ``A A' = s1`` (Cholesky; the symmetric square
    root where ``s1`` is singular), a symmetric eigenproblem instead of a general one."""
    a, info = torch.linalg.cholesky_ex(s1)
    bad = info != 0
    if bad.any():
        w, v = torch.linalg.eigh(s1[bad])
        a[bad] = (v * w.clamp_min(0).sqrt()[..., None, :]) @ v.transpose(-1, -2)
    tr_sqrt = torch.linalg.eigvalsh(a.transpose(-1, -2) @ s2 @ a).clamp_min(0).sqrt().sum(-1)
    return (mu1 - mu2).square().sum(-1) + s1.diagonal(dim1=-2, dim2=-1).sum(-1) \
        + s2.diagonal(dim1=-2, dim2=-1).sum(-1) - 2 * tr_sqrt


def _interval(value: float, reps: torch.Tensor, level: float, floor: Optional[float] = None) -> Interval:
    """``value`` with the replicates' percentile spread around their median (module docstring)."""
    reps = reps[torch.isfinite(reps)]
    if len(reps) == 0:
        return Interval(value, float("nan"), float("nan"), level, 0)
    alpha = (1 - level) / 2
    lo, med, hi = torch.quantile(reps, torch.tensor([alpha, 0.5, 1 - alpha], dtype=reps.dtype)).tolist()
    lo, hi = value + lo - med, value + hi - med
    if floor is not None:
        lo = max(lo, floor)
    return Interval(value, lo, hi, level, len(reps))


def fid_interval(value: float, fake, real, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = LEVEL,
                 chunk: int = 100) -> Interval:  # fmt: skip
    """Bootstrap interval of ``value`` (the FID of ``fake`` against ``real``, features or :class:`Features`).

    Uses the D x D route: about 0.3 s for 500 replicates at the classifier's D = 32. With
    Inception's D = 2048 each replicate costs a 2048 x 2048 Cholesky and eigendecomposition
    (seconds): the n x n cross-Gram route (tr sqrt(S1 S2) is the nuclear norm of A1 A2') is
    not written yet, so Inception intervals are slow."""
    f_fake, f_real = _rows(fake), _rows(real)
    g = torch.Generator().manual_seed(seed)
    c_fake, c_real = resample_counts(len(f_fake), n_boot, g), resample_counts(len(f_real), n_boot, g)
    reps = []
    with one_thread():  # small batched linear algebra: threads only contend (and would change the bits)
        for i in range(0, n_boot, chunk):
            mu1, s1 = _weighted_moments(f_real, c_real[i : i + chunk])
            mu2, s2 = _weighted_moments(f_fake, c_fake[i : i + chunk])
            # the means were centred on each set's own mean: add the difference back
            reps.append(frechet_distance(mu1 + f_real.mean(0), s1, mu2 + f_fake.mean(0), s2))
    return _interval(value, torch.cat(reps), level, floor=0.0)


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid_interval(value: float, fake, real, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                 level: float = LEVEL) -> Interval:  # fmt: skip
    """Bootstrap interval of ``value`` (a KID of ``fake`` against ``real``): replicates are the
    unbiased MMD^2 (cubic kernel) of the whole resampled sets, from count-weighted kernel sums."""
    x, y = _rows(fake), _rows(real)
    m, n = len(x), len(y)
    g = torch.Generator().manual_seed(seed + 1)  # not the FID's draws
    cx, cy = resample_counts(m, n_boot, g), resample_counts(n, n_boot, g)
    with one_thread():
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        # sum over ordered pairs of distinct positions a != b = c'Kc - sum_i c_i K_ii
        sxx = ((cx @ kxx) * cx).sum(1) - cx @ kxx.diagonal()
        syy = ((cy @ kyy) * cy).sum(1) - cy @ kyy.diagonal()
        sxy = ((cx @ kxy) * cy).sum(1)
    reps = sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)
    return _interval(value, reps, level)


def pairwise_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel MSE between every pair: ``a`` [N_a, ...], ``b`` [N_b, ...] -> [N_a, N_b] float64."""
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
    kid = compute_kid(server_images, client_images, extractor, kid_subsets, kid_subset_size, seed, n_boot=0)
    mse = mean_pairwise_mse(server_images, client_images)
    return DisclosureResult(kid=kid, pixel_mse=mse, n_server=len(server_images), n_client=len(client_images))
