import numpy as np
import pytest
import torch

from collafuse_privacy.config import DataConfig
from collafuse_privacy.data import load_dataset, make_splits
from collafuse_privacy.errors import UserError


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits", image_size=8))


def test_digits_range_and_shape(digits):
    assert digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.min() >= -1 and digits.images.max() <= 1
    assert digits.images.min() == -1 and digits.images.max() == 1
    assert digits.num_classes == 10


def test_mnist5k_is_real_mnist_resized():
    ds = load_dataset(DataConfig(name="mnist5k", image_size=16))
    assert ds.images.shape == (5000, 1, 16, 16)
    assert torch.bincount(ds.labels).tolist() == [500] * 10
    assert -1 <= ds.images.min() and ds.images.max() <= 1
    # MNIST digits: dark background, bright strokes in the middle
    assert ds.images[:, :, 0, :].mean() < -0.95 and ds.images[:, :, 6:10, 6:10].mean() > -0.5


@pytest.mark.parametrize("partition", ["iid", "by-class", "dirichlet"])
@pytest.mark.parametrize("clients", [1, 3, 12])
def test_splits_disjoint_and_cover(digits, partition, clients):
    cfg = DataConfig(name="digits", image_size=8, clients=clients, partition=partition, dirichlet_alpha=5.0)
    if partition == "dirichlet" and clients == 12:
        cfg = DataConfig(name="digits", image_size=8, clients=clients, partition=partition, dirichlet_alpha=100.0)
    s = make_splits(digits, cfg, seed=0)
    parts = [s.public] + s.members + s.holdout
    allidx = np.concatenate([np.asarray(p, dtype=int) for p in parts])
    assert len(allidx) == len(set(allidx.tolist())) == len(digits), "splits overlap or miss images"
    assert len(s.members) == clients and all(len(m) > 0 for m in s.members)
    assert abs(len(s.public) - 0.1 * len(digits)) <= 1
    for m, h in zip(s.members, s.holdout):
        assert abs(len(h) - 0.2 * (len(m) + len(h))) <= 1
    if partition == "by-class" and clients <= 10:
        classes = [set(digits.labels[m + h].tolist()) for m, h in zip(s.members, s.holdout)]
        for i in range(clients):
            for j in range(i + 1, clients):
                assert not classes[i] & classes[j], "by-class clients share a class"


def test_splits_are_seeded(digits):
    cfg = DataConfig(name="digits", image_size=8, clients=3)
    assert make_splits(digits, cfg, 0) == make_splits(digits, cfg, 0)
    assert make_splits(digits, cfg, 0) != make_splits(digits, cfg, 1)


def test_too_many_clients(digits):
    with pytest.raises(UserError, match="data.clients"):
        make_splits(digits, DataConfig(name="digits", clients=5000), 0)


def test_missing_root():
    with pytest.raises(UserError, match="data.root does not exist"):
        load_dataset(DataConfig(name="cifar10", root="/nonexistent/cifar"))


def test_cifar10_and_image_folder_loaders(tmp_path):
    import pickle

    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in ["data_batch_1", "test_batch"]:
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": list(range(6))}, fh)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path), image_size=16))
    assert ds.images.shape == (12, 3, 16, 16) and -1 <= ds.images.min() and ds.images.max() <= 1

    folder = tmp_path / "imgs"
    for cls in ["cat", "dog"]:
        (folder / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / cls / f"{cls}{i}.png")
    ds = load_dataset(DataConfig(name="image-folder", root=str(folder), image_size=8))
    assert ds.images.shape == (6, 3, 8, 8) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    csv = tmp_path / "attrs.csv"
    csv.write_text("file,smiling\n" + "".join(f"{c}{i}.png,{i % 2}\n" for c in ["cat", "dog"] for i in range(3)))
    ds = load_dataset(DataConfig(name="image-folder", root=str(folder), image_size=8, attributes=str(csv), channels=1))
    assert ds.images.shape == (6, 1, 8, 8) and sorted(ds.labels.tolist()) == [0, 0, 0, 0, 1, 1]


def test_image_folder_attribute_groups(tmp_path):
    """CelebA-style clients: label = first attribute group an image belongs to; others left out."""
    from PIL import Image

    folder = tmp_path / "img"
    folder.mkdir()
    rows = ["image_id,Black_Hair,Blond_Hair,Eyeglasses"]
    spec = [(1, -1, -1), (-1, 1, 1), (-1, -1, 1), (-1, -1, -1)]
    for i, (a, b, c) in enumerate(spec):
        Image.fromarray(np.full((10, 12), 40 * i, dtype=np.uint8)).save(folder / f"{i:06d}.jpg")
        rows.append(f"{i:06d}.jpg,{a},{b},{c}")
    csv = tmp_path / "list_attr_celeba.csv"
    csv.write_text("\n".join(rows) + "\n")
    cfg = DataConfig(name="image-folder", root=str(folder), image_size=8, attributes=str(csv), channels=3,
                     attribute_groups="hair colour=Black_Hair,Blond_Hair; accessories=Eyeglasses")
    ds = load_dataset(cfg)
    assert ds.labels.tolist() == [0, 0, 1]  # image 3 has none of the attributes
    with pytest.raises(UserError, match="Bald"):
        load_dataset(DataConfig(name="image-folder", root=str(folder), image_size=8, attributes=str(csv),
                                attribute_groups="hair=Bald"))
