"""Feature extractors for FID / KID.

An extractor is an ``nn.Module`` mapping images ``[N, C, H, W]`` with pixels in
``[-1, 1]`` to features ``[N, D]`` (``float64``), with a ``name`` that every quality
figure records, the ``sha256`` of its weights (its identity: figures made with two
different hashes are never comparable, and ``report`` refuses to put them side by side),
and a ``num_features = D`` that torchmetrics reads instead of probing the module.

Two kinds:

* ``inception``: Inception-v3 pool features (``D = 2048``) with the torch-fidelity
  weights, exactly the network torchmetrics' ``FrechetInceptionDistance`` builds
  (``NoTrainInceptionV3``). Used only when the weights file already sits in the torch
  hub cache (``torch.hub.get_dir()/checkpoints/``); nothing is ever downloaded. Its
  ``sha256`` is that of the weights file.
* ``classifier``: offline stand-in. A small CNN trained on a fixed split of the dataset;
  its features are the penultimate layer (``D = spec.feature_dim``), its ``sha256`` that
  of its weights serialised as safetensors (:func:`weights_bytes`, the bytes of the file).

One set of weights per (dataset, image size, spec), whatever the run:

* **Thread count.** Training and feature extraction run on the CPU with one torch thread
  (:func:`one_thread`; multi-threaded reductions sum in another order, and the same
  samples scored 115 or 125 FID with a classifier trained on 2 or 1 threads), and every
  random draw comes from a seed: the weights are the same bytes on any machine with the
  same torch build and CPU kind. The classifier is small enough that the GPU would not help.
* **The split** (:func:`extractor_split`) is by image id, not by any run's split: a seeded
  permutation of all ``N`` images, 10% (500 on mnist5k) held out to measure test
  accuracy, the rest to train. A run's members and held-out images are then each, by
  the same chance, in the classifier's training set or not, so the extractor treats
  them alike, and two runs with different splits or seeds (``sweep --seeds K``) are
  scored in the same feature space. (Earlier versions trained on each run's public and
  held-out images: one extractor per split, and members and held-out treated differently.)
  How much "fitted" images move the figures is measured, not assumed: the quality table's
  floor row is members against held-out images with the same extractor and the same n.
* **Shipped.** The default data set's extractors (mnist5k at 16x16 and 28x28) ship inside
  the package (``collafuse_privacy/eval/extractors/``, with a JSON beside each that
  records its sha256, test accuracy and how it was made); :func:`build_shipped_extractor`
  (``python benchmarks/build_extractor.py``) regenerates them bit for bit. Any other data
  set or size is trained once the same way and cached under a hash of the dataset
  fingerprint, the split, the spec and the training code version
  (``$COLLAFUSE_CACHE/classifiers`` or ``~/.cache/collafuse_privacy/classifiers``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from collafuse_privacy.data import Dataset
from collafuse_privacy.errors import UserError

# Bump when the training code changes what a given spec produces: it is part of the
# cache key, so stale classifiers are retrained rather than silently reused.
CLASSIFIER_CODE_VERSION = 2
EXTRACTOR_KINDS = ("auto", "inception", "classifier")
# The fixed split of every data set's images for the classifier (extractor_split).
SPLIT_SEED = 0
TEST_FRACTION = 0.1
# Extractors shipped as package data: data set -> image sizes (files <name>-<size>.safetensors / .json).
SHIPPED = {"mnist5k": (16, 28)}
SHIPPED_PACKAGE = "collafuse_privacy.eval.extractors"


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
        self.sha256 = sha256_file(path)  # about 0.3 s for its 100 MB, once per evaluate
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
    from safetensors.torch import save

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


def default_cache_dir() -> Path:
    """``$COLLAFUSE_CACHE/classifiers`` if the env var is set, else ``~/.cache/collafuse_privacy/classifiers``."""
    root = os.environ.get("COLLAFUSE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "collafuse_privacy"
    return base / "classifiers"


def extractor_split(n: int, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> tuple[list[int], list[int]]:
    """``(train, test)`` image ids (sorted) for the offline classifier: a seeded permutation
    of all ``n`` ids, the first ``round(test_fraction * n)`` held out to measure accuracy.
    Independent of any run's split (module docstring)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(test_fraction * n))
    return sorted(perm[n_test:]), sorted(perm[:n_test])


def _ids_sha256(ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(int(i) for i in ids)).encode()).hexdigest()


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


def _load_net(ds: Dataset, spec: ClassifierSpec, blob: bytes) -> SmallCNN:
    from safetensors.torch import load

    net = SmallCNN(ds.shape[0], ds.num_classes, spec)
    net.load_state_dict(load(blob))
    return net.eval()


def load_or_train_classifier(
    ds: Dataset,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    spec: ClassifierSpec = ClassifierSpec(),
    cache_dir: Optional[Union[str, Path]] = None,
) -> ClassifierFeatures:
    """The classifier extractor for this (dataset, split, spec), from the cache or trained and cached.

    Cache: ``<cache_dir>/<key>.safetensors`` (:func:`weights_bytes`) and ``<key>.json`` (spec,
    split sizes, test accuracy, dataset fingerprint, the weights' sha256). ``cache_dir``
    defaults to :func:`default_cache_dir`. An entry that fails to load or whose bytes do not
    hash to its recorded sha256 is retrained and replaced.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = classifier_key(ds, train_idx, test_idx, spec)
    weights, meta_path = cache / f"{key}.safetensors", cache / f"{key}.json"
    common = dict(dataset=ds.name, image_size=ds.shape[-1], key=key, n_train=len(train_idx), n_test=len(test_idx),
                  path=weights, spec=spec)  # fmt: skip
    if weights.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            blob = weights.read_bytes()
            sha = hashlib.sha256(blob).hexdigest()
            if meta.get("key") != key or meta.get("sha256") != sha:
                raise ValueError("key or sha256 mismatch")
            return ClassifierFeatures(_load_net(ds, spec, blob), sha256=sha, test_accuracy=float(meta["test_accuracy"]),
                                      source="cached", **common)  # fmt: skip
        except Exception:
            pass  # corrupt or foreign entry: retrain below and overwrite it
    meta = _train_entry(ds, train_idx, test_idx, spec)
    blob = meta.pop("_bytes")
    net = meta.pop("_net")
    meta["key"] = key
    cache.mkdir(parents=True, exist_ok=True)
    # Write to temporary names, then rename: a crash never leaves a half-written entry under the key.
    tmp_w, tmp_m = weights.with_suffix(f".tmp{os.getpid()}.st"), meta_path.with_suffix(f".tmp{os.getpid()}.json")
    tmp_w.write_bytes(blob)
    tmp_m.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_w, weights)
    os.replace(tmp_m, meta_path)
    return ClassifierFeatures(net, sha256=meta["sha256"], test_accuracy=meta["test_accuracy"], source="trained",
                              **common)  # fmt: skip


def _train_entry(ds: Dataset, train_idx: Sequence[int], test_idx: Sequence[int], spec: ClassifierSpec) -> dict:
    """Train and describe one classifier: the JSON written beside its weights (plus ``_bytes``, ``_net``)."""
    t0 = time.perf_counter()
    net, acc = train_classifier(ds, train_idx, test_idx, spec)
    seconds = time.perf_counter() - t0
    blob = weights_bytes(net)
    return {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "code_version": CLASSIFIER_CODE_VERSION,
        "dataset": ds.name,
        "data_fingerprint": ds.fingerprint(),
        "image_shape": list(ds.shape),
        "num_classes": ds.num_classes,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "split_sha256": _ids_sha256(test_idx),
        "test_accuracy": acc,
        "train_seconds": round(seconds, 1),
        "spec": dataclasses.asdict(spec),
        "torch": torch.__version__,
        "_bytes": blob,
        "_net": net,
    }


# ---------------------------------------------------------------------------
# Shipped extractors (package data)
# ---------------------------------------------------------------------------


def shipped_files(dataset: str, image_size: int) -> tuple[Path, Path]:
    """``(weights, meta)`` paths of the shipped extractor for ``dataset`` at ``image_size`` (may not exist)."""
    root = Path(str(resources.files(SHIPPED_PACKAGE)))
    return root / f"{dataset}-{image_size}.safetensors", root / f"{dataset}-{image_size}.json"


def shipped_classifier(ds: Dataset, spec: ClassifierSpec = ClassifierSpec()) -> tuple[Optional[ClassifierFeatures], str]:
    """``(extractor, why_not)``: the shipped extractor for ``ds`` (None, with the reason, when
    none fits: another data set, size, spec, or pixels that differ from the ones it was made for).

    A shipped file whose bytes do not hash to the sha256 recorded beside it is a
    :class:`UserError` (a damaged install), never a silently different extractor.
    """
    size = ds.shape[-1]
    if size not in SHIPPED.get(ds.name, ()):
        return None, f"none ships for {ds.name} at {size}x{size}"
    if spec != ClassifierSpec():
        return None, "the shipped one has the default spec"
    weights, meta_path = shipped_files(ds.name, size)
    if not (weights.is_file() and meta_path.is_file()):
        return None, f"{weights.name} is missing from the install"
    meta = json.loads(meta_path.read_text())
    blob = weights.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    if sha != meta["sha256"]:
        raise UserError(f"the shipped extractor {weights} does not match the sha256 recorded beside it "
                        "(a damaged install: reinstall collafuse-privacy)")  # fmt: skip
    if meta["data_fingerprint"] != ds.fingerprint() or meta["code_version"] != CLASSIFIER_CODE_VERSION:
        return None, (f"the shipped one was made for other {ds.name} pixels (fingerprint {meta['data_fingerprint']}, "
                      f"these {ds.fingerprint()})")  # fmt: skip
    train_idx, test_idx = extractor_split(len(ds))
    ext = ClassifierFeatures(_load_net(ds, spec, blob), dataset=ds.name, image_size=size,
                             key=classifier_key(ds, train_idx, test_idx, spec), sha256=sha,
                             test_accuracy=float(meta["test_accuracy"]), n_train=int(meta["n_train"]),
                             n_test=int(meta["n_test"]), source="shipped", path=weights, spec=spec)  # fmt: skip
    return ext, ""


def build_shipped_extractor(dataset: str = "mnist5k", image_size: int = 16,
                            out_dir: Optional[Union[str, Path]] = None) -> dict:  # fmt: skip
    """Train the extractor that ships for ``dataset`` at ``image_size`` and write
    ``<out_dir>/<dataset>-<size>.safetensors`` and ``.json`` (default: the package's folder).
    Returns the JSON's content. Deterministic: rerunning it reproduces the shipped bytes."""
    from collafuse_privacy.config import DataConfig
    from collafuse_privacy.data import load_dataset

    ds = load_dataset(DataConfig(name=dataset, image_size=image_size))
    meta = _train_entry(ds, *extractor_split(len(ds)), ClassifierSpec())
    blob = meta.pop("_bytes")
    meta.pop("_net")
    meta["split"] = (f"extractor_split: torch.randperm({len(ds)}, Generator seed {SPLIT_SEED}); the first "
                     f"{meta['n_test']} ids test, the rest train")  # fmt: skip
    weights, meta_path = shipped_files(dataset, image_size)
    if out_dir is not None:
        weights, meta_path = Path(out_dir) / weights.name, Path(out_dir) / meta_path.name
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(blob)
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


# ---------------------------------------------------------------------------
# Choice
# ---------------------------------------------------------------------------


def get_extractor(
    kind: str = "auto",
    *,
    dataset: Optional[Dataset] = None,
    spec: ClassifierSpec = ClassifierSpec(),
    cache_dir: Optional[Union[str, Path]] = None,
    device: str = "cpu",
) -> tuple[FeatureExtractor, str]:
    """``(extractor, note)``: the extractor for ``kind`` and one line saying which was used.

    ``kind``: ``auto`` (Inception if its weights are cached, else the classifier),
    ``inception`` (fails with a :class:`UserError` if the weights are absent) or
    ``classifier`` (needs ``dataset``: the shipped one when it fits, else trained on
    :func:`extractor_split` and cached). ``device`` applies to Inception; the classifier
    always runs on the CPU (its bits must not depend on the device).
    """
    if kind not in EXTRACTOR_KINDS:
        raise UserError(f"unknown feature extractor {kind!r} (known: {', '.join(EXTRACTOR_KINDS)})")
    if kind == "inception" or (kind == "auto" and inception_available()):
        ext = InceptionFeatures().to(device)
        how = " (auto: weights found in the torch hub cache)" if kind == "auto" else ""
        return ext, f"features: {ext.name}, sha256 {ext.sha256[:12]}{how}"
    if dataset is None:
        raise UserError("the offline classifier extractor needs the dataset")
    ext, why_not = shipped_classifier(dataset, spec)
    if ext is None:
        ext = load_or_train_classifier(dataset, *extractor_split(len(dataset)), spec, cache_dir)
    how = {"shipped": "shipped with the package", "cached": f"trained and cached ({why_not})",
           "trained": f"trained now ({why_not})"}[ext.source]  # fmt: skip
    cached = inception_weights_path().name
    why = f"Inception weights not in the torch hub cache ({cached}); using " if kind == "auto" else "features: "
    return ext, (f"{why}{ext.name} (offline CNN, {how}; test accuracy {ext.test_accuracy:.2%} on {ext.n_test} "
                 f"images, trained on {ext.n_train}; sha256 {ext.sha256[:12]})")  # fmt: skip


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
