"""The offline classifier extractor: a small CNN (:class:`SmallCNN`) trained on a fixed split of the
data set, its penultimate layer the features (:class:`ClassifierFeatures`). Its training
(:func:`train_classifier`) is the same bytes on any thread count; its identity is the sha256 of
its weights as safetensors (:func:`weights_bytes`). Where it comes from (shipped, cached or trained
now) is :mod:`.features`'."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load, save

from collafuse_privacy.data import Dataset
from collafuse_privacy.errors import UserError

from .extractor import FeatureExtractor, one_thread


@dataclass(frozen=True)
class ClassifierSpec:
    """Architecture and training hyper-parameters of the offline classifier (all in the cache key).

    Measured with the defaults on mnist5k (:func:`extractor_split`: 4,500 images to train,
    500 to test), one thread: see the shipped JSON files for test accuracy and seconds.
    """

    width: int = 16  # channels of the first stage; stages use width, 2*width, 4*width
    feature_dim: int = 32  # penultimate layer = the FID/KID features; small so covariances of ~100 images are usable
    steps: int = 700  # optimiser steps (independent of pool size so the cost is predictable)
    batch_size: int = 64
    lr: float = 3e-3  # peak of a one-cycle schedule
    weight_decay: float = 1e-4
    dropout: float = 0.2
    # Random affine augmentation per image.
    max_rotation: float = 0.2  # radians
    max_scale: float = 0.1  # relative
    max_shift: float = 0.15  # in affine_grid units (1.0 = half the image side)
    seed: int = 0


class SmallCNN(nn.Module):
    """Conv classifier: images [N, C, S, S] in [-1, 1] -> logits [N, classes]; ``features`` -> [N, feature_dim]."""

    def __init__(self, channels: int, num_classes: int, spec: ClassifierSpec):
        super().__init__()
        w = spec.width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, spec.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(spec.feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def weights_bytes(net: nn.Module) -> bytes:
    """The weights as safetensors bytes (names sorted, no metadata): what is saved, and what ``sha256`` hashes."""
    return save({k: v.detach().cpu().contiguous() for k, v in sorted(net.state_dict().items())})


class ClassifierFeatures(FeatureExtractor):
    """Penultimate-layer features of a trained :class:`SmallCNN`, computed on the CPU with one thread.

    Attributes: ``name`` (``classifier-<dataset>-<S>px-<sha256[:12]>``), ``sha256`` (of
    :func:`weights_bytes`), ``key`` (cache key), ``test_accuracy`` (on the test ids of
    :func:`extractor_split`), ``n_train``, ``n_test``, ``source`` (``shipped``, ``cached``
    or ``trained``), ``path`` (the safetensors file).
    """

    def __init__(self, net: SmallCNN, *, dataset: str, image_size: int, key: str, sha256: str, test_accuracy: float,
                 n_train: int, n_test: int, source: str, path: Path, spec: ClassifierSpec):  # fmt: skip
        super().__init__()
        self.net = net.cpu()
        self.net.requires_grad_(False)
        self.key = key
        self.sha256 = sha256
        self.name = f"classifier-{dataset}-{image_size}px-{sha256[:12]}"
        self.num_features = spec.feature_dim
        self.spec = spec
        self.test_accuracy = test_accuracy
        self.n_train = n_train
        self.n_test = n_test
        self.source = source
        self.path = path
        self.eval()

    @property
    def from_cache(self) -> bool:
        return self.source != "trained"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with one_thread():
            return self.net.features(images.float().cpu()).double()


def _augment(x: torch.Tensor, spec: ClassifierSpec, g: torch.Generator) -> torch.Tensor:
    """Random rotation / scale / shift per image; borders replicate the edge pixels."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * spec.max_rotation
    inv_scale = 1.0 / (1 + (torch.rand(n, generator=g) * 2 - 1) * spec.max_scale)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * spec.max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) * inv_scale
    theta[:, 0, 1] = -torch.sin(ang) * inv_scale
    theta[:, 1, 0] = torch.sin(ang) * inv_scale
    theta[:, 1, 1] = torch.cos(ang) * inv_scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


def train_classifier(
    ds: Dataset, train_idx: Sequence[int], test_idx: Sequence[int], spec: ClassifierSpec
) -> tuple[SmallCNN, float]:
    """Train :class:`SmallCNN` on ``ds[train_idx]``; return it (eval mode) and its accuracy on ``ds[test_idx]``.

    The same bytes on any thread count: on the CPU, with one torch thread (:func:`one_thread`);
    batch order and augmentation from a ``torch.Generator`` seeded with ``spec.seed``, weight
    initialisation and dropout from the global RNG, forked (the caller's is untouched) and
    seeded with ``spec.seed``.
    """
    if ds.num_classes < 2:
        raise UserError(f"the offline classifier needs labelled data with 2+ classes; {ds.name} has {ds.num_classes}")
    if len(train_idx) < ds.num_classes or len(test_idx) == 0:
        raise UserError(f"too few images for the offline classifier on {ds.name}: "
                        f"{len(train_idx)} to train, {len(test_idx)} to test")  # fmt: skip
    train_t = torch.as_tensor(list(train_idx), dtype=torch.long)
    test_t = torch.as_tensor(list(test_idx), dtype=torch.long)
    x, y = ds.images[train_t].cpu(), ds.labels[train_t].cpu()
    g = torch.Generator().manual_seed(spec.seed)
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # nn.init and Dropout draw from the global RNG
        net = SmallCNN(ds.shape[0], ds.num_classes, spec)
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps)
        net.train()
        perm, pos = torch.randperm(len(x), generator=g), 0
        for _ in range(spec.steps):
            if pos + spec.batch_size > len(x):  # new epoch: reshuffle, drop the ragged tail
                perm, pos = torch.randperm(len(x), generator=g), 0
            b = perm[pos : pos + spec.batch_size]
            pos += spec.batch_size
            loss = F.cross_entropy(net(_augment(x[b], spec, g)), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = _accuracy(net, ds.images[test_t].cpu(), ds.labels[test_t].cpu())
    return net.eval(), acc


def load_net(ds: Dataset, spec: ClassifierSpec, blob: bytes) -> SmallCNN:
    """The network of ``blob`` (:func:`weights_bytes` of a trained :class:`SmallCNN` for ``ds``), in eval mode."""
    net = SmallCNN(ds.shape[0], ds.num_classes, spec)
    net.load_state_dict(load(blob))
    return net.eval()

