"""The Inception extractor: Inception-v3 pool features with the torch-fidelity weights, used only
when the weights file already sits in the torch hub cache (nothing is ever downloaded; see
:mod:`.features`). torch-fidelity is imported only when Inception is asked for (seconds to import)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from collafuse_privacy.errors import UserError

from .extractor import FeatureExtractor, sha256_file


def inception_weights_path() -> Path:
    """Where torch-fidelity's ``load_state_dict_from_url`` would cache the Inception weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3  # a heavy import, only when asked

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def inception_available() -> bool:
    """True when the torch-fidelity Inception weights are already in the torch hub cache."""
    return inception_weights_path().is_file()


def inception_missing_message() -> str:
    """One line saying why Inception is unavailable and how to make it available."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return (
        f"Inception weights not in the torch hub cache ({inception_weights_path()}); "
        f"to use Inception, download {URL_INCEPTION_V3} to that path"
    )


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 2048-d pool features, as torchmetrics' FID computes them.

    Images in [-1, 1] are quantised to uint8 [0, 255] (what the network expects; values
    outside [-1, 1] are clipped, as saving them as PNG would), grey images are repeated to
    3 channels, and torchmetrics resizes them to 299x299 (antialiased bilinear).
    """

    def __init__(self, weights_path: Optional[Union[str, Path]] = None):
        super().__init__()
        path = Path(weights_path) if weights_path is not None else inception_weights_path()
        if not path.is_file():
            raise UserError(inception_missing_message())
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity unpickles the file with weights_only=False; a weights-only load first
        # refuses a cache file that holds anything but tensors. The explicit path below means
        # torch-fidelity never takes its download branch.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            )
        except Exception as e:
            raise UserError(f"Inception weights at {path} do not load: {e}") from None
        self.name = "inception-v3-pool2048 (torch-fidelity weights)"
        self.num_features = 2048
        self.sha256 = sha256_file(path)  # about 0.3 s for its 100 MB, once per evaluate
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(u8).double()

