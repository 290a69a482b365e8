"""Shared fixtures: tiny CollaFuse runs on scikit-learn digits (8x8) with micro UNets."""

import os
from importlib import resources
from pathlib import Path

import pytest
import torch

from collafuse_privacy.config import load_config

# One intra-op thread: the suite's models are tiny, and on this 2-core machine the whole suite
# measured 391 s with one thread against 548 s with two (2026-12-03, alone, same tree).
# OMP_NUM_THREADS wins when set.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

CONFIGS = Path(str(resources.files("collafuse_privacy.configs")))

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
    # 4-step models at T = 20 are noise: unclipped high-noise steps (the default `low-noise` rule)
    # let them wander far outside the box; tests of the default rule set it themselves.
    "sample.clip=x0",
    "device=cpu",
    "secrets.derive_from_seed=true",  # reproducible from the seed (tests/test_secrets.py covers the default)
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(*overrides)`` -> directory of a trained tiny run (trained once per session
    for each distinct set of overrides; treat it as read-only, copy it to modify)."""
    from collafuse_privacy.training import train

    cache: dict[tuple, object] = {}
    prints: dict[tuple, dict] = {}

    def make(*overrides):
        key = tuple(overrides)
        if key not in cache:
            run_dir = tmp_path_factory.mktemp("run")
            train(tiny_config("record.dtype=float32", *overrides), run_dir, device="cpu", quiet=True)
            cache[key], prints[key] = run_dir, _fingerprint(run_dir)
        return cache[key]

    yield make
    # shared by every test of the session: a test that changed or removed what training wrote would change
    # what later tests see (attack and evaluation outputs added beside it are allowed; the lock file is rewritten)
    changed = {}
    for k, before in prints.items():
        now = _fingerprint(cache[k])
        bad = sorted(f for f, v in before.items() if f != ".lock" and now.get(f) != v)
        if bad:
            changed[str(cache[k])] = bad[:5]
    assert not changed, f"tests changed files training wrote in the shared tiny_run directories (copy first): {changed}"


def _fingerprint(run_dir) -> dict:
    """Every file of a run with its size and modification time."""
    return {str(f.relative_to(run_dir)): (f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(Path(run_dir).rglob("*")) if f.is_file()}  # fmt: skip


def synthetic_cut_meta(T: int, shape, mu_target: float, *, fixed_noise: bool, clients: int):
    """The ``ViewMeta`` of a synthetic cut-image view (no training) at the cut whose single-release
    ``mu`` is nearest ``mu_target``; returns ``(meta, mu)``. Used by the release-bound and audit tests."""
    from collafuse_privacy.config import DiffusionConfig
    from collafuse_privacy.protocol.cut import Cut
    from collafuse_privacy.view import ServerView, ViewMeta

    dcfg = DiffusionConfig(timesteps=T)

    def meta_of(t_c):
        cut = Cut(dcfg, t_c)
        return ViewMeta(protocol="cut-image", cut_ratio=t_c / T, fixed_noise=fixed_noise, t_c=t_c, timesteps=T,
                        handover_level=t_c - 1, abar_handover=cut.abar_handover, diffusion=dcfg,
                        server_conditioning="none", model_preset="micro", client_preset=None, clients=clients,
                        data_name="synthetic", image_shape=list(shape), public_images=0)  # fmt: skip

    def mu_of(meta):
        return ServerView(meta=meta).protocol.release_mu(tuple(shape))

    meta = meta_of(min(range(1, T), key=lambda t: abs(mu_of(meta_of(t)) - mu_target)))
    return meta, mu_of(meta)
