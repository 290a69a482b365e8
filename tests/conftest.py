"""Shared fixtures: tiny CollaFuse runs on scikit-learn digits (8x8) with micro UNets."""

import pytest
import torch

from collafuse_privacy.config import load_config

torch.set_num_threads(2)

TINY = [
    "data.name=digits",
    "data.image_size=8",
    "data.clients=2",
    "diffusion.timesteps=20",
    "model.preset=micro",
    "train.steps=4",
    "train.batch_size=8",
    "train.checkpoint_every=2",
    "record.shard_size=16",
    "sample.n=4",
    "device=cpu",
]


def tiny_config(*overrides):
    """The tiny test config with extra ``key=value`` overrides."""
    return load_config(None, TINY + list(overrides))


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache, and any download attempt fails the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    import torchvision.models._api as tv_api
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_download)
    return hub
