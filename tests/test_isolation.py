"""Attacks see the server's view and nothing else (DESIGN.md §2-3).

A run on an image folder is trained and sampled; then a copy holding only
``server_view/`` and the server's own checkpoint files is attacked with every
reconstruction and membership method while the dataset folder is gone and any
attempt to load a dataset fails the test.
"""

import shutil

import numpy as np
import pytest
import torch

import collafuse_privacy.data as data_module
from collafuse_privacy.attacks import membership, reconstruction
from collafuse_privacy.attacks.reconstruction.denoiser import clear_cache
from collafuse_privacy.sampling import sample_run
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView

from conftest import tiny_config

FAST = {"learned": {"steps": 20}, "average": {"steps": 20},
        "posterior": {"steps": 20, "sample_steps": 4}, "inference": {"steps": 20, "sample_steps": 4}}  # fmt: skip


def _digit_folder(root, n=160):
    """scikit-learn digits as 8-bit PNGs in one sub-folder per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i in range(n):
        folder = root / str(int(d.target[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def view_only(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iso")
    images = _digit_folder(tmp / "images")
    cfg = tiny_config("data.name=image-folder", f"data.root={images}", "data.channels=1", "data.public_fraction=0.2",
                      "protocol.cut_ratio=0.3", "train.steps=12", "record.dtype=float32")
    run = tmp / "run"
    train(cfg, run, device="cpu", quiet=True)
    sample_run(run, n=4, device="cpu")
    out = tmp / "view_only"
    shutil.copytree(run / "server_view", out / "server_view")
    step = sorted(p for p in (run / "checkpoints").iterdir() if p.is_dir())[-1]
    (out / "checkpoints" / step.name).mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "latest.json", out / "checkpoints")
    # the server's own files and the checkpoint's manifest (sha256 of each file), nothing of the clients
    for name in ("server.safetensors", "server_ema.safetensors", "manifest.json"):
        shutil.copy(step / name, out / "checkpoints" / step.name / name)
    shutil.move(str(images), str(tmp / "images-gone"))  # the dataset is no longer where the config says
    return out


@pytest.fixture
def no_dataset(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an attack tried to load the dataset")

    monkeypatch.setattr(data_module, "load_dataset", refuse)
    for name in list(data_module.LOADERS):
        monkeypatch.setitem(data_module.LOADERS, name, refuse)


def test_view_holds_its_public_images_and_no_ids(view_only, no_dataset):
    assert sorted(p.name for p in view_only.iterdir()) == ["checkpoints", "server_view"]
    view = ServerView.load(view_only)
    public, labels = view.public_images()
    assert len(public) == view.meta.public_images > 0 and public.shape[1:] == view.image_shape
    assert public.min() >= -1 and public.max() <= 1 and len(labels) == len(public)
    assert set(view.messages) == {"x", "client", "round"}
    assert view.handover is not None and view.server_model() is not None


def test_every_attack_runs_on_the_view_alone(view_only, no_dataset):
    clear_cache()
    view = ServerView.load(view_only)
    for name in reconstruction.names():
        attack = reconstruction.make(name, **FAST.get(name, {}))
        if name == "exact":
            with pytest.raises(reconstruction.NotApplicable, match="no noise"):
                attack.fit(view)
            continue
        out = attack.fit(view).reconstruct(view)
        n = len(view) if attack.source == "messages" else len(view.handover["h"])
        assert out.images.shape == (n, *view.image_shape) and torch.equal(out.rows, torch.arange(n))
        assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1
    candidates = torch.rand(6, *view.image_shape) * 2 - 1
    for name in membership.names():
        attack = membership.make(name).fit(view)
        for k in range(view.meta.clients):
            s = attack.score(view, candidates, client=k)
            assert s.shape == (6,) and torch.isfinite(s).all(), name
