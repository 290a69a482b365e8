import pytest
import yaml

from collafuse_privacy.config import config_hash, Config, cut_timestep, default_config_text, load_config
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
        ("train.sampling=random", "config key 'train.sampling' must be one of shuffle, poisson"),
        ("protocol.target_threat=both", "config key 'protocol.target_threat' must be one of linked, unlinked"),
    ],
)
def test_bad_values_name_the_key(override, words):
    with pytest.raises(UserError, match=words.replace(".", r"\.")):
        load_config(None, [override])


def test_config_hash_and_roundtrip():
    a = load_config(None, ["seed=1"])
    b = load_config(None, ["seed=1"])
    assert config_hash(a) == config_hash(b) and config_hash(a) != config_hash(load_config())
    assert isinstance(a, Config)
    # one decision on what identifies a run: train.steps and the device are not part of it ...
    longer = load_config(None, ["seed=1", "train.steps=901", "device=cpu"])
    assert config_hash(longer) == config_hash(a)
    # ... but are part of what its results were computed with (device aside)
    assert config_hash(longer, full=True) != config_hash(a, full=True)
    assert config_hash(load_config(None, ["seed=1", "device=cpu"]), full=True) == config_hash(a, full=True)


def test_late_keys_at_their_default_keep_the_hashes_of_runs_made_before_them():
    from collafuse_privacy.config import LATE_KEYS, identity

    cfg = load_config(None, ["seed=1"])
    assert not set(LATE_KEYS) & set(identity(cfg))  # at the default: the identity of a run made before the keys
    # the default config's names as at 99ae7dd, before train.precision / batched_clients / deterministic and
    # sample.batched_clients existed (measured there): a run or a sweep cell made then keeps its folder
    assert (config_hash(cfg), config_hash(cfg, full=True)) == ("360b25f65a", "1c4a57f953")
    for key, other in (("train.sampling", "poisson"), ("protocol.target_threat", "unlinked"),
                       ("train.precision", "bf16"), ("train.batched_clients", "true"), ("train.deterministic", "true")):
        changed = load_config(None, ["seed=1", f"{key}={other}"])
        assert str(identity(changed)[key]).lower() == other and config_hash(changed) != config_hash(cfg)
        assert config_hash(changed, full=True) != config_hash(cfg, full=True)
    # sampling the clients together changes no training: the same run, recorded in the full hash
    changed = load_config(None, ["seed=1", "sample.batched_clients=true"])
    assert config_hash(changed) == config_hash(cfg) and config_hash(changed, full=True) != config_hash(cfg, full=True)


def test_config_command_prints_every_key_and_loads_back(tmp_path):
    import yaml
    from click.testing import CliRunner

    from collafuse_privacy.cli import main
    from collafuse_privacy.config import flatten, from_dict

    r = CliRunner().invoke(main, ["config", "--set", "protocol.cut_ratio=0.3"])
    assert r.exit_code == 0, r.output
    cfg = from_dict(yaml.safe_load(r.stdout))
    assert cfg == load_config(None, ["protocol.cut_ratio=0.3"])
    assert all(k.split(".")[-1] + ":" in r.stdout for k in flatten(cfg.to_dict()))
    assert "cut_ratio: 0.3  # default: 0.5" in r.stdout and "kind: cut-image  # one of" in r.stdout
    r = CliRunner().invoke(main, ["train", "--help"])
    assert "collafuse-privacy config" in r.stdout
