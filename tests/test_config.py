import pytest
import yaml

from collafuse_privacy.config import Config, cut_timestep, default_config_text, load_config
from collafuse_privacy.errors import UserError

# The keys outside tools rely on (DESIGN.md §6), with a value of the right type.
CONTRACT = {
    "seed": 3,
    "data.name": "digits",
    "data.root": None,
    "data.image_size": 8,
    "data.clients": 3,
    "data.partition": "dirichlet",
    "diffusion.timesteps": 50,
    "diffusion.schedule": "cosine",
    "model.preset": "micro",
    "protocol.kind": "shared-noise",
    "protocol.cut_ratio": 0.25,
    "protocol.fixed_noise": False,
    "train.steps": 7,
    "train.batch_size": 5,
    "defense.client_dp.enabled": False,
    "defense.client_dp.noise_multiplier": 1.1,
    "defense.client_dp.target_epsilon": 8.0,
}


def test_default_config_is_the_embedded_yaml():
    cfg = load_config()
    assert cfg == load_config(None, [])
    assert cfg.data.name == "mnist5k"
    raw = yaml.safe_load(default_config_text())
    assert raw["data"]["name"] == "mnist5k"


def test_every_contract_key_can_be_set_with_a_typed_value():
    overrides = [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}" for k, v in CONTRACT.items()]
    cfg = load_config(None, overrides)
    for key, value in CONTRACT.items():
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        assert obj == value and type(obj) is type(value), key


def test_int_accepted_for_float_and_t_c_rounds():
    cfg = load_config(None, ["protocol.cut_ratio=1", "diffusion.timesteps=10"])
    assert cfg.protocol.cut_ratio == 1.0 and cfg.t_c == 10
    assert cut_timestep(0.0, 1000) == 0
    assert cut_timestep(0.25, 1000) == 250
    assert cut_timestep(0.5, 7) == 4  # 3.5 rounds up, not to even


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.colour=3", "unknown config key 'data.colour'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("protocol.cut_ratio=1.5", "protocol.cut_ratio"),
        ("protocol.cut_ratio=-0.1", "protocol.cut_ratio"),
        ("protocol.cut_ratio=abc", "protocol.cut_ratio"),
        ("train.steps=1.5", "train.steps"),
        ("protocol.fixed_noise=3", "protocol.fixed_noise"),
        ("data.partition=random", "data.partition"),
        ("protocol.kind=both", "protocol.kind"),
        ("data=3", "data"),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        load_config(None, [override])


def test_config_hash_and_roundtrip():
    a = load_config(None, ["seed=1"])
    b = load_config(None, ["seed=1"])
    assert a.hash() == b.hash() and a.hash() != load_config().hash()
    assert isinstance(a, Config)
