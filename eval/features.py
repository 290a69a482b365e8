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
  random draw comes from a seed: the weights are the same bytes on any thread count on one
  machine. Not across CPU instruction sets: oneDNN and MKL pick other kernels for AVX2, AVX-512
  and AMX, and 700 training steps amplify their last-bit differences (measured 2026-12-03: three
  different sha256 on one machine limited to each ISA). That is why the weights *ship*
  (:func:`shipped_classifier`) rather than being rebuilt where they are used, and why every
  figure names their sha256. The classifier is small enough that the GPU would not help.
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

This module chooses the extractor and owns where a classifier comes from (the split, the cache,
the shipped files); the interface is :mod:`.extractor`, the networks :mod:`.inception` and
:mod:`.classifier`, all re-exported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from collafuse_privacy.config import DataConfig
from collafuse_privacy.data import Dataset, load_dataset
from collafuse_privacy.errors import UserError

from .classifier import ClassifierFeatures, ClassifierSpec, SmallCNN, load_net, train_classifier, weights_bytes  # noqa: F401
from .extractor import FeatureExtractor, extract_features, extractor_device, one_thread, sha256_file  # noqa: F401
from .inception import (InceptionFeatures, inception_available, inception_missing_message,  # noqa: F401
                        inception_weights_path)  # fmt: skip

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
            return ClassifierFeatures(load_net(ds, spec, blob), sha256=sha, test_accuracy=float(meta["test_accuracy"]),
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
    ext = ClassifierFeatures(load_net(ds, spec, blob), dataset=ds.name, image_size=size,
                             key=classifier_key(ds, train_idx, test_idx, spec), sha256=sha,
                             test_accuracy=float(meta["test_accuracy"]), n_train=int(meta["n_train"]),
                             n_test=int(meta["n_test"]), source="shipped", path=weights, spec=spec)  # fmt: skip
    return ext, ""


def build_shipped_extractor(dataset: str = "mnist5k", image_size: int = 16,
                            out_dir: Optional[Union[str, Path]] = None) -> dict:  # fmt: skip
    """Train the extractor that ships for ``dataset`` at ``image_size`` and write
    ``<out_dir>/<dataset>-<size>.safetensors`` and ``.json`` (default: the package's folder).
    Returns the JSON's content. Deterministic on one machine (any thread count); on a CPU with
    another instruction set it gives other bytes of the same accuracy (see the module's notes)."""
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

