"""The interface every FID / KID feature extractor implements (:class:`FeatureExtractor`), the
one-thread rule that makes features the same bits on any machine (:func:`one_thread`), and
batched extraction. The extractors themselves: :mod:`.inception` and :mod:`.classifier`; which one
a run uses: :mod:`.features`."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator, Union

import torch
import torch.nn as nn


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body with one torch intra-op thread (restored after): results independent of the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FeatureExtractor(nn.Module):
    """Base: ``forward(images [N, C, H, W] in [-1, 1]) -> features [N, D] float64``.

    Always in eval mode (BatchNorm / Dropout must not change features between calls).
    ``sha256``: hash of the weights, the extractor's identity.
    """

    name: str
    num_features: int
    sha256: str = ""

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)


def extract_features(images: torch.Tensor, extractor: FeatureExtractor, batch_size: int = 256) -> torch.Tensor:
    """Features ``[N, D]`` float64 (on CPU) of images ``[N, C, H, W]`` in [-1, 1], in batches."""
    device = extractor_device(extractor)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(extractor(images[i : i + batch_size].to(device)).double().cpu())
    return torch.cat(out) if out else torch.empty(0, extractor.num_features, dtype=torch.float64)


def extractor_device(m: nn.Module) -> torch.device:
    p = next(iter(m.parameters()), None)
    return p.device if p is not None else torch.device("cpu")
