"""Every shipped config loads; paper-style presets ask for their data path."""

from importlib import resources
from pathlib import Path

import pytest

from collafuse_privacy.config import load_config
from collafuse_privacy.errors import UserError
from collafuse_privacy.orchestration import load_sweep

CONFIGS = Path(str(resources.files("collafuse_privacy.configs")))


@pytest.mark.parametrize("name", ["cifar10", "celeba", "awa2"])
def test_paper_presets_need_data_root(name):
    with pytest.raises(UserError, match="data.root"):
        load_config(CONFIGS / f"{name}.yaml")
    cfg = load_config(CONFIGS / f"{name}.yaml", ["data.root=/somewhere"])
    assert cfg.diffusion.timesteps == 1000 and cfg.data.clients == 5


def test_default_sweep_cells(tmp_path):
    sw = load_sweep(CONFIGS / "sweep-default.yaml", tmp_path / "demo")
    cuts = sorted(c.config["protocol"]["cut_ratio"] for c in sw.cells)
    assert cuts == [0.0, 0.2, 0.5, 0.5, 1.0]
    assert sum(c.config["defense"]["client_dp"]["enabled"] for c in sw.cells) == 1
    assert all(c.config["data"]["name"] == "mnist5k" for c in sw.cells)
    assert not (tmp_path / "demo").exists()  # loading a sweep touches nothing
