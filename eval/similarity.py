"""Per-image similarity between two image sets, for scoring reconstructions.

All functions take ``x``, ``y`` of shape ``[N, C, H, W]`` (pixels in ``[-1, 1]``) and
return ``[N]`` (torchmetrics with ``reduction="none"``): the score of ``x[i]`` against
``y[i]``. Values outside [-1, 1] (raw reconstructions) are used as they are, not clipped.

* MSE per pixel, in [-1, 1] units (4x the MSE of the same images in [0, 1]).
* PSNR with ``data_range = 2.0`` (the width of [-1, 1]); this equals PSNR of the same
  images mapped to [0, 1] with range 1. Identical images give ``+inf`` (torchmetrics).
* SSIM (Wang et al. 2004; torchmetrics, Gaussian window sigma 1.5, 11 px) on the images
  mapped to [0, 1] (``(x + 1) / 2``) with ``data_range = 1``, the usual convention. SSIM
  is scale- but not shift-invariant: its luminance term ``(2 mx my + C1) / (mx^2 + my^2 + C1)``
  is unstable for means near 0, so computing it on [-1, 1] would give different, lower
  values. Needs images of at least 6 px a side.
* LPIPS (Zhang et al. 2018, the ``lpips`` package, v0.1 linear layers). Its linear
  layers ship inside the pip package; the AlexNet / VGG / SqueezeNet backbone comes
  from torchvision's file in the torch hub cache (``torch.hub.get_dir()/checkpoints``).
  When that file is absent LPIPS is reported as unavailable (``None`` and the reason),
  never replaced by another metric, and nothing is downloaded: the backbone is built
  without weights and filled from the cached file ourselves. Grey images are repeated
  to 3 channels; images under 64 px are upsampled bilinearly to 64x64 (LPIPS was
  calibrated on 64x64 patches, and AlexNet's pooling needs more than ~32 px).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from collafuse_privacy.errors import UserError

DATA_RANGE = 2.0  # width of the pixel range [-1, 1]
LPIPS_NETS = ("alex", "vgg", "squeeze")
LPIPS_VERSION = "0.1"
LPIPS_MIN_SIZE = 64  # LPIPS calibration patch size (BAPPS)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two [N, C, H, W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared pixel error ``[N]``, in [-1, 1] units."""
    _check_pair(x, y)
    return (x.float() - y.float()).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB ``[N]`` with data range 2 (``+inf`` where ``x[i] == y[i]``)."""
    _check_pair(x, y)
    return peak_signal_noise_ratio(x.float(), y.float(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM ``[N]`` (1 for identical images), computed on ``(x + 1) / 2`` with data range 1."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < 6:
        raise ValueError(f"SSIM's 11-px Gaussian window needs images of at least 6 px, got {tuple(x.shape[-2:])}")
    x01, y01 = (x.float() + 1) / 2, (y.float() + 1) / 2
    return structural_similarity_index_measure(x01, y01, data_range=1.0, reduction="none")


# ---------------------------------------------------------------------------
# LPIPS (offline only)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LPIPSStatus:
    """Whether LPIPS with backbone ``net`` can run offline, and why not when it cannot."""

    net: str
    available: bool
    reason: str  # "" when available
    backbone_path: str  # where torchvision's backbone weights are (or would be) cached


def _backbone_weights(net: str):
    """The torchvision weights enum ``lpips`` asks for (``pretrained=True`` means IMAGENET1K_V1)."""
    from torchvision import models as tv

    return {
        "alex": (tv.alexnet, tv.AlexNet_Weights.IMAGENET1K_V1),
        "vgg": (tv.vgg16, tv.VGG16_Weights.IMAGENET1K_V1),
        "squeeze": (tv.squeezenet1_1, tv.SqueezeNet1_1_Weights.IMAGENET1K_V1),
    }[net]


def lpips_backbone_path(net: str = "alex") -> Path:
    """Path torchvision's ``load_state_dict_from_url`` uses for the LPIPS backbone ``net``."""
    if net not in LPIPS_NETS:
        raise UserError(f"unknown LPIPS backbone {net!r} (known: {', '.join(LPIPS_NETS)})")
    _, weights = _backbone_weights(net)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def lpips_status(net: str = "alex") -> LPIPSStatus:
    """Check, without loading or downloading anything, whether LPIPS ``net`` is usable."""
    path = lpips_backbone_path(net)
    try:
        import lpips
    except ImportError:
        return LPIPSStatus(net, False, "the 'lpips' package is not installed", str(path))
    linear = Path(lpips.__file__).parent / "weights" / f"v{LPIPS_VERSION}" / f"{net}.pth"
    if not linear.is_file():
        return LPIPSStatus(net, False, f"lpips' linear-layer weights are missing: {linear}", str(path))
    if not path.is_file():
        return LPIPSStatus(
            net, False, f"LPIPS unavailable: {net} backbone weights not in the torch hub cache ({path})", str(path)
        )
    return LPIPSStatus(net, True, "", str(path))


def load_lpips(net: str = "alex", device: str = "cpu"):
    """An ``lpips.LPIPS`` model (eval mode, no grad) with the cached backbone; :class:`UserError` if unavailable."""
    status = lpips_status(net)
    if not status.available:
        raise UserError(status.reason)
    import lpips

    build, _ = _backbone_weights(net)
    with warnings.catch_warnings():
        # lpips calls torchvision's deprecated ``pretrained=`` argument; harmless here.
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand=True: the backbone is built with random weights, so torchvision never tries to download.
        model = lpips.LPIPS(net=net, version=LPIPS_VERSION, pretrained=True, pnet_rand=True, verbose=False)
    try:
        reference = build(weights=None)
        reference.load_state_dict(torch.load(status.backbone_path, map_location="cpu", weights_only=True))
    except Exception as e:
        raise UserError(f"LPIPS backbone weights at {status.backbone_path} do not load: {e}") from None
    # lpips' slices hold the modules of torchvision's ``features`` under their original indices.
    for slice_ in model.net.children():
        for idx, module in slice_.named_children():
            module.load_state_dict(reference.features[int(idx)].state_dict())
    model.requires_grad_(False)
    return model.eval().to(device)


def lpips_distance(x: torch.Tensor, y: torch.Tensor, model, batch_size: int = 64) -> torch.Tensor:
    """Per-image LPIPS ``[N]`` (0 for identical images) with a model from :func:`load_lpips`."""
    _check_pair(x, y)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"LPIPS needs 1- or 3-channel images, got {x.shape[1]} channels")
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            a, b = (t[i : i + batch_size].float().to(device) for t in (x, y))
            if a.shape[1] == 1:
                a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
            if min(a.shape[-2:]) < LPIPS_MIN_SIZE:
                size = (max(LPIPS_MIN_SIZE, a.shape[-2]), max(LPIPS_MIN_SIZE, a.shape[-1]))
                a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
                b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
            out.append(model(a, b).flatten().cpu())
    return torch.cat(out) if out else torch.empty(0)


# ---------------------------------------------------------------------------
# All at once
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SimilarityScores:
    """Per-image scores of ``x[i]`` against ``y[i]``, each ``[N]``.

    ``lpips`` is ``None`` when LPIPS could not run offline; ``lpips_note`` then says why,
    otherwise it names the backbone and any resize.
    """

    mse: torch.Tensor
    psnr: torch.Tensor
    ssim: torch.Tensor
    lpips: Optional[torch.Tensor]
    lpips_note: str
    data_range: float = DATA_RANGE

    def to_dict(self) -> dict:
        as_list = lambda t: None if t is None else [float(v) for v in t]  # noqa: E731
        return {
            "mse": as_list(self.mse), "psnr": as_list(self.psnr), "ssim": as_list(self.ssim),
            "lpips": as_list(self.lpips), "lpips_note": self.lpips_note, "data_range": self.data_range,
        }  # fmt: skip


def image_similarity(
    x: torch.Tensor, y: torch.Tensor, lpips_net: Optional[str] = "alex", device: str = "cpu"
) -> SimilarityScores:
    """MSE, PSNR, SSIM and (when available offline) LPIPS of ``x[i]`` vs ``y[i]``; ``lpips_net=None`` skips LPIPS."""
    _check_pair(x, y)
    lp: Optional[torch.Tensor] = None
    if lpips_net is None:
        note = "LPIPS not requested"
    else:
        status = lpips_status(lpips_net)
        if status.available:
            lp = lpips_distance(x, y, load_lpips(lpips_net, device))
            resized = min(x.shape[-2:]) < LPIPS_MIN_SIZE
            note = f"LPIPS v{LPIPS_VERSION} {lpips_net}" + (
                f" (images upsampled to at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE})" if resized else ""
            )
        else:
            note = status.reason
    return SimilarityScores(mse=mse(x, y), psnr=psnr(x, y), ssim=ssim(x, y), lpips=lp, lpips_note=note)
