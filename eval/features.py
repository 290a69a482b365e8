"""Feature extractors for FID / KID.

An extractor is an ``nn.Module`` mapping images ``[N, C, H, W]`` with pixels in
``[-1, 1]`` to features ``[N, D]`` (``float64``), with a ``name`` that every quality
figure records and a ``num_features = D`` that torchmetrics reads instead of probing
the module with a dummy image. Figures from different extractors are never comparable.

Two kinds:

* ``inception``: Inception-v3 pool features (``D = 2048``) with the torch-fidelity
  weights, exactly the network torchmetrics' ``FrechetInceptionDistance`` builds
  (``NoTrainInceptionV3``). Used only when the weights file already sits in the torch
  hub cache (``torch.hub.get_dir()/checkpoints/``); nothing is ever downloaded.
* ``classifier``: offline stand-in. A small CNN trained once on an evaluation split of
  the dataset; its features are the penultimate layer (``D = spec.feature_dim``). It is
  cached under a hash of the dataset fingerprint, the split indices, the architecture
  and hyper-parameters and the training code version, as safetensors plus a JSON that
  holds its test accuracy.

Which images the classifier sees (:func:`evaluation_split`):
  FID/KID compare samples against a client's *held-out* images, and the generators were
  trained on the clients' *members*. The feature network must not have been fit to the
  members: a sample that copies a member would then land on "training-set" features.
  We train on every image no client trains on, i.e. the public split plus all clients'
  held-out images, and measure test accuracy on the members (never used for fitting,
  only scored, so no parameter depends on them).
  The risk: the FID reference images (held-out) are in the classifier's training set,
  so fresh images from the true distribution could sit at an FID floor above the
  held-out-vs-held-out value. We accept it because the public split alone (500 images
  on mnist5k) stays near 96% test accuracy, below the 97% DESIGN.md asks, because the
  floor would be the same for every cut ratio compared, and because we measured it to
  be within sampling noise: on mnist5k 16x16, 112 images per set, clients 0-3, FID
  held-out vs unseen members 5.8-11.8, random held-out halves 3.4-9.7, member halves
  5.0-12.9, held-out vs uniform noise 283-303. ``tests/test_eval_quality.py`` keeps
  checking that held-out vs members stays far below held-out vs noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from collafuse_privacy.data import Dataset, Splits
from collafuse_privacy.errors import UserError

# Bump when the training code changes what a given spec produces: it is part of the
# cache key, so stale classifiers are retrained rather than silently reused.
CLASSIFIER_CODE_VERSION = 1
EXTRACTOR_KINDS = ("auto", "inception", "classifier")


class FeatureExtractor(nn.Module):
    """Base: ``forward(images [N, C, H, W] in [-1, 1]) -> features [N, D] float64``.

    Always in eval mode (BatchNorm / Dropout must not change features between calls).
    """

    name: str
    num_features: int

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)


# ---------------------------------------------------------------------------
# Inception (torch-fidelity weights, offline only)
# ---------------------------------------------------------------------------


def inception_weights_path() -> Path:
    """Where torch-fidelity's ``load_state_dict_from_url`` would cache the Inception weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

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
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        u8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(u8).double()


# ---------------------------------------------------------------------------
# Offline classifier
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierSpec:
    """Architecture and training hyper-parameters of the offline classifier (all in the cache key).

    Measured with the defaults (split of the module docstring, mnist5k, 4 iid clients):
    16x16 test accuracy 98.0% (split seed 0), 97.7% (seeds 1, 2), trained in about 15 s on
    2 CPU cores (20-25 s on one); 28x28 97.4% (seed 0), 97.7% (seed 1), about 35 s on 2
    cores. Digits 8x8: 99.1%.
    """

    width: int = 16  # channels of the first stage; stages use width, 2*width, 4*width
    feature_dim: int = 32  # penultimate layer = the FID/KID features; small so covariances of ~100 images are usable
    steps: int = 700  # optimiser steps (independent of pool size so the cost is predictable)
    batch_size: int = 64
    lr: float = 3e-3  # peak of a one-cycle schedule
    weight_decay: float = 1e-4
    dropout: float = 0.2
    # Random affine augmentation per image: the pool is small (about 1,400 images on mnist5k).
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


class ClassifierFeatures(FeatureExtractor):
    """Penultimate-layer features of a trained :class:`SmallCNN`.

    Attributes: ``name`` (``classifier-<dataset>-<key[:10]>``), ``key`` (full cache key),
    ``test_accuracy`` (on the test indices it was built with), ``n_train``, ``n_test``,
    ``from_cache`` (loaded rather than trained), ``path`` (the safetensors file).
    """

    def __init__(self, net: SmallCNN, *, dataset: str, key: str, test_accuracy: float, n_train: int, n_test: int,
                 from_cache: bool, path: Path, spec: ClassifierSpec):  # fmt: skip
        super().__init__()
        self.net = net
        self.net.requires_grad_(False)
        self.key = key
        self.name = f"classifier-{dataset}-{key[:10]}"
        self.num_features = spec.feature_dim
        self.spec = spec
        self.test_accuracy = test_accuracy
        self.n_train = n_train
        self.n_test = n_test
        self.from_cache = from_cache
        self.path = path
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features(images.float()).double()


def default_cache_dir() -> Path:
    """``$COLLAFUSE_CACHE/classifiers`` if the env var is set, else ``~/.cache/collafuse_privacy/classifiers``."""
    root = os.environ.get("COLLAFUSE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "collafuse_privacy"
    return base / "classifiers"


def evaluation_split(splits: Splits) -> tuple[list[int], list[int]]:
    """``(train, test)`` indices for the offline classifier.

    train = public split + every client's held-out images (all images no client trains on);
    test = every client's members (scored only). See the module docstring for why.
    """
    train = sorted(set(splits.public).union(*map(set, splits.holdout)))
    test = sorted(set().union(*map(set, splits.members)))
    return train, test


def classifier_key(ds: Dataset, train_idx: Sequence[int], test_idx: Sequence[int], spec: ClassifierSpec) -> str:
    """sha256 over everything that determines the trained classifier and its reported accuracy."""
    blob = json.dumps(
        {
            "code_version": CLASSIFIER_CODE_VERSION,
            "data_fingerprint": ds.fingerprint(),
            "image_shape": list(ds.shape),
            "num_classes": ds.num_classes,
            "train": sorted(int(i) for i in train_idx),
            "test": sorted(int(i) for i in test_idx),
            "spec": dataclasses.asdict(spec),
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()


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
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(x))


def train_classifier(
    ds: Dataset, train_idx: Sequence[int], test_idx: Sequence[int], spec: ClassifierSpec, device: str = "cpu"
) -> tuple[SmallCNN, float]:
    """Train :class:`SmallCNN` on ``ds[train_idx]``; return it (eval mode) and its accuracy on ``ds[test_idx]``.

    Deterministic: weights and dropout draw from a forked global RNG seeded with
    ``spec.seed``, batch order and augmentation from a ``torch.Generator``; on CPU with a
    fixed thread count the result is bit for bit reproducible.
    """
    if ds.num_classes < 2:
        raise UserError(f"the offline classifier needs labelled data with 2+ classes; {ds.name} has {ds.num_classes}")
    if len(train_idx) < ds.num_classes or len(test_idx) == 0:
        raise UserError(
            f"too few images for the offline classifier on {ds.name}: "
            f"{len(train_idx)} to train, {len(test_idx)} to test "
            "(raise data.public_fraction or data.holdout_fraction)"
        )
    train_t = torch.as_tensor(list(train_idx), dtype=torch.long)
    test_t = torch.as_tensor(list(test_idx), dtype=torch.long)
    x, y = ds.images[train_t].to(device), ds.labels[train_t].to(device)
    g = torch.Generator().manual_seed(spec.seed)
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(spec.seed)  # nn.init and Dropout use the global RNG; forked so callers' RNG is untouched
        net = SmallCNN(ds.shape[0], ds.num_classes, spec).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps)
        net.train()
        perm, pos = torch.randperm(len(x), generator=g), 0
        for _ in range(spec.steps):
            if pos + spec.batch_size > len(x):  # new epoch: reshuffle, drop the ragged tail
                perm, pos = torch.randperm(len(x), generator=g), 0
            b = perm[pos : pos + spec.batch_size].to(device)
            pos += spec.batch_size
            loss = F.cross_entropy(net(_augment(x[b], spec, g)), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    acc = _accuracy(net, ds.images[test_t].to(device), ds.labels[test_t].to(device))
    return net.eval(), acc


def load_or_train_classifier(
    ds: Dataset,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    spec: ClassifierSpec = ClassifierSpec(),
    cache_dir: Optional[Union[str, Path]] = None,
    device: str = "cpu",
) -> ClassifierFeatures:
    """The classifier extractor for this (dataset, split, spec), from the cache or trained and cached.

    Cache: ``<cache_dir>/<key>.safetensors`` (weights) and ``<key>.json`` (spec, split
    sizes, test accuracy, dataset fingerprint). ``cache_dir`` defaults to
    :func:`default_cache_dir`. A cache entry that fails to load is retrained and replaced.
    """
    from safetensors.torch import load_file, save_file

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = classifier_key(ds, train_idx, test_idx, spec)
    weights, meta_path = cache / f"{key}.safetensors", cache / f"{key}.json"
    common = dict(dataset=ds.name, key=key, n_train=len(train_idx), n_test=len(test_idx), path=weights, spec=spec)
    if weights.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                raise ValueError("key mismatch")
            net = SmallCNN(ds.shape[0], ds.num_classes, spec)
            net.load_state_dict(load_file(str(weights)))
            acc = float(meta["test_accuracy"])
            return ClassifierFeatures(net.to(device), test_accuracy=acc, from_cache=True, **common)
        except Exception:
            pass  # corrupt or foreign entry: retrain below and overwrite it
    t0 = time.perf_counter()
    net, acc = train_classifier(ds, train_idx, test_idx, spec, device)
    seconds = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    meta = {
        "key": key,
        "code_version": CLASSIFIER_CODE_VERSION,
        "dataset": ds.name,
        "data_fingerprint": ds.fingerprint(),
        "image_shape": list(ds.shape),
        "num_classes": ds.num_classes,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "test_accuracy": acc,
        "train_seconds": seconds,
        "spec": dataclasses.asdict(spec),
    }
    # Write to temporary names, then rename: a crash never leaves a half-written entry under the key.
    tmp_w, tmp_m = weights.with_suffix(f".tmp{os.getpid()}.st"), meta_path.with_suffix(f".tmp{os.getpid()}.json")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp_w))
    tmp_m.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_w, weights)
    os.replace(tmp_m, meta_path)
    return ClassifierFeatures(net, test_accuracy=acc, from_cache=False, **common)


# ---------------------------------------------------------------------------
# Choice
# ---------------------------------------------------------------------------


def get_extractor(
    kind: str = "auto",
    *,
    dataset: Optional[Dataset] = None,
    splits: Optional[Splits] = None,
    spec: ClassifierSpec = ClassifierSpec(),
    cache_dir: Optional[Union[str, Path]] = None,
    device: str = "cpu",
) -> tuple[FeatureExtractor, str]:
    """``(extractor, note)``: the extractor for ``kind`` and one line saying which was used.

    ``kind``: ``auto`` (Inception if its weights are cached, else the classifier),
    ``inception`` (fails with a :class:`UserError` if the weights are absent) or
    ``classifier`` (needs ``dataset`` and ``splits``; trained on :func:`evaluation_split`).
    """
    if kind not in EXTRACTOR_KINDS:
        raise UserError(f"unknown feature extractor {kind!r} (known: {', '.join(EXTRACTOR_KINDS)})")
    if kind == "inception" or (kind == "auto" and inception_available()):
        ext = InceptionFeatures().to(device)
        how = " (auto: weights found in the torch hub cache)" if kind == "auto" else ""
        return ext, f"features: {ext.name}{how}"
    if dataset is None or splits is None:
        raise UserError("the offline classifier extractor needs the dataset and its splits")
    train_idx, test_idx = evaluation_split(splits)
    ext = load_or_train_classifier(dataset, train_idx, test_idx, spec, cache_dir, device)
    cached = inception_weights_path().name
    why = f"Inception weights not in the torch hub cache ({cached}); using " if kind == "auto" else "features: "
    return ext, (
        f"{why}{ext.name} (offline CNN, test accuracy {ext.test_accuracy:.2%} on {ext.n_test} member images, "
        f"trained on {ext.n_train} public + held-out images{', cached' if ext.from_cache else ''})"
    )


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
