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
