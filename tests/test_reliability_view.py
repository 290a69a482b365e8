"""Issue 23: the view is verified before it is attacked, every option is checked before any
work, nothing is silently replaced. One test (or more) per numbered case of the issue."""

import json
import shutil

import pytest
import yaml

from collafuse_privacy.errors import UserError
from collafuse_privacy.training import train

from conftest import TINY, tiny_config
from test_reliability import _copy, _run, _sets
from test_reliability import _one_line_exit_2 as _exit_2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("rel23") / "run"
    train(tiny_config("train.steps=4"), run, device="cpu", quiet=True)
    return run


def _attack(run, *extra):
    return _run("attack", "--run", str(run), "--type", "membership", "--method", "view-lrt", *extra)


def _shards(run):
    return sorted((run / "server_view" / "train").glob("shard-*.safetensors"))


# ---- 1-4: the view is verified ------------------------------------------------------------


def test_1_a_corrupted_view_shard_is_refused(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    f = _shards(run)[0]
    data = f.read_bytes()
    f.write_bytes(data[:-64] + bytes(b ^ 0xFF for b in data[-64:]))  # same size, other bytes
    _exit_2(_attack(run), "does not match the sha256")
    assert not (run / "metrics" / "membership.json").exists()


def test_2_a_deleted_view_shard_is_refused(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    for f in _shards(run):
        f.unlink()
    _exit_2(_attack(run), "is missing")


def test_2_an_extra_shard_is_refused(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    shutil.copy(_shards(run)[0], run / "server_view" / "train" / "shard-00000099-00000099.safetensors")
    _exit_2(_attack(run), "not in")


def test_3_a_run_without_a_checkpoint_is_not_attacked(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    shutil.rmtree(run / "checkpoints")  # a train killed before its first checkpoint
    _exit_2(_attack(run), "no checkpoint")
    r = _run("attack", "--run", str(run), "--type", "reconstruction", "--method", "rescale")
    _exit_2(r, "no checkpoint")


def test_3_a_view_without_a_manifest_is_refused_and_train_seals_it(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    (run / "server_view" / "manifest.json").unlink()
    _exit_2(_attack(run), "no manifest.json")
    train(tiny_config("train.steps=4"), run, device="cpu", quiet=True)  # the same command: nothing to train, sealed
    assert _attack(run).exit_code == 0


def test_4_view_meta_is_checked_against_the_config(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    meta = json.loads((run / "server_view" / "meta.json").read_text())
    meta["t_c"] = 5
    (run / "server_view" / "meta.json").write_text(json.dumps(meta))
    _exit_2(_attack(run), "t_c = 5")
    run = _copy(trained, tmp_path / "r2")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["protocol"]["cut_ratio"] = 0.2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    _exit_2(_attack(run), "cut_ratio")


# ---- 5, 10: typed, ranged options --------------------------------------------------------------


@pytest.mark.parametrize("option", ["loss.n_noise=0", "loss.n_noise=-3", "loss.fractions=[]", "loss.n_noise=.inf",
                                    "loss.fractions=abc", "loss.fractions=[.nan]", "learned.lr=.nan",
                                    "view-composed.releases=0", "secmi.k=500"])
def test_5_10_bad_option_values_are_refused_when_parsed(option, tmp_path):
    from collafuse_privacy.attacks import parse_options
    from collafuse_privacy.attacks.membership import FAMILY as M
    from collafuse_privacy.attacks.reconstruction import FAMILY as R

    family = R if option.startswith("learned") else M
    with pytest.raises(UserError, match="option|bad options"):
        parse_options([option], family)
    kind = "reconstruction" if family is R else "membership"
    r = _run("attack", "--run", str(tmp_path / "nowhere-needed"), "--type", kind, "--option", option)
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_every_method_declares_every_option():
    from collafuse_privacy.attacks.base import option_specs
    from collafuse_privacy.attacks.membership import FAMILY as M
    from collafuse_privacy.attacks.reconstruction import FAMILY as R

    for family in (M, R):
        for name in family.names():
            assert set(family.options(name)) <= set(option_specs(family.get(name))), name


def test_5_all_nan_scores_give_no_result(tmp_path, trained, monkeypatch):
    import torch

    from collafuse_privacy.attacks.membership.view_lrt import ViewLRT
    from collafuse_privacy.eval.membership import run_membership

    run = _copy(trained, tmp_path / "r")
    monkeypatch.setattr(ViewLRT, "score", lambda self, view, x, client=None: torch.full((len(x),), float("nan")))
    res = run_membership(run, methods=["view-lrt"], log=lambda m: None)
    m = res.methods["view-lrt"]
    assert not m.applicable and "NaN" in m.reason and m.auc is None


# ---- 6, 13, 15: sweep files --------------------------------------------------------------------


def _nested(flat):
    out = {}
    for k, v in flat.items():
        node = out
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _sweep_file(tmp_path, stages, **extra):
    base = _nested({k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in TINY)})
    f = tmp_path / "sweep.yaml"
    f.write_text(yaml.safe_dump({"base": base, "grid": {"seed": [0]}, "stages": stages, **extra}))
    return f


@pytest.mark.parametrize("stages, words", [
    ({"audit": {"canaries": 0}}, "canaries"),
    ({"evaluate": {"n": -5}}, "'n'"),
    ({"membership": {"targets": ["client:99"]}}, "client:99"),
    ({"membership": {"options": {"loss": {"n_noise": float("inf")}}}}, "n_noise"),
    ({"audit": {"methods": ["nosuch"]}}, "nosuch"),
])
def test_6_13_sweep_stage_values_are_checked_when_the_file_loads(tmp_path, stages, words):
    from collafuse_privacy.orchestration import load_sweep

    with pytest.raises(UserError, match=words.replace("'", "'")):
        load_sweep(_sweep_file(tmp_path, stages), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_6_the_audit_stage_never_replaces_its_canaries(monkeypatch, tmp_path):
    import collafuse_privacy.orchestration.stages as stages
    from collafuse_privacy.orchestration.stages import STAGES

    seen = {}
    monkeypatch.setattr(stages, "run_audit", lambda cfg, out, **kw: seen.update(kw))
    STAGES.get("audit")(tmp_path, tiny_config(), device="cpu", canaries=8)
    assert seen["canaries"] == 8


def test_15_a_cell_with_no_stages_is_refused_at_load(tmp_path):
    from collafuse_privacy.orchestration import load_sweep

    f = _sweep_file(tmp_path, {}, include=[{"seed": 5, "stages": {"privacy": {}}}])
    with pytest.raises(UserError, match="no stages to run"):
        load_sweep(f, tmp_path / "out")


# ---- 7: nothing earlier is dropped ---------------------------------------------------------


def test_7_another_method_keeps_the_earlier_results(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    assert _attack(run).exit_code == 0
    before = json.loads((run / "metrics" / "membership.json").read_text())["targets"]["server"]["methods"]["view-lrt"]
    r = _run("attack", "--run", str(run), "--type", "membership", "--method", "loss")
    assert r.exit_code == 0, r.output
    methods = json.loads((run / "metrics" / "membership.json").read_text())["targets"]["server"]["methods"]
    assert set(methods) == {"view-lrt", "loss"}
    assert methods["view-lrt"]["auc"] == before["auc"]
    import numpy as np

    npz = np.load(run / "metrics" / "membership_scores.npz")
    assert {"score_view-lrt", "score_loss"} <= set(npz.files)


# ---- 8, 9, 12, 16-19: inputs checked before any work -----------------------------------------


@pytest.mark.parametrize("override, words", [
    ("data.holdout_fraction=0", "data.holdout_fraction"),
    ("seed=-1", "'seed'"),
    ("seed=99999999999999999999999", "'seed'"),
])
def test_8_9_config_values_refused(override, words):
    with pytest.raises(UserError, match=words):
        tiny_config(override)


def test_12_threads_are_capped(tmp_path):
    r = _run("--threads", "100000", "config", *_sets())
    assert r.exit_code == 0 and "using" in r.stderr


def test_16_audit_run_and_out_are_alternatives(tmp_path, trained):
    _exit_2(_run("audit", "--run", str(trained), "--out", str(tmp_path / "a")), "alternatives")
    assert not (tmp_path / "a").exists()


def test_14_audit_checks_methods_and_options_before_training(tmp_path):
    _exit_2(_run("audit", *_sets(), "--out", str(tmp_path / "a"), "--canaries", "8", "--method", "nosuch"), "nosuch")
    _exit_2(_run("audit", *_sets(), "--out", str(tmp_path / "b"), "--canaries", "8",
                 "--option", "view-composed.releases=0"), "releases")  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_11_huge_sample_and_audit_are_refused_before_any_work(tmp_path, trained):
    from collafuse_privacy.resources import available_memory

    if available_memory() is None:
        pytest.skip("memory available unknown here")
    run = _copy(trained, tmp_path / "r")
    _exit_2(_run("sample", "--run", str(run), "--n", "1000000000"), "--n")
    assert not (run / "samples").exists()
    _exit_2(_run("audit", *_sets(), "--out", str(tmp_path / "a"), "--canaries", "1000000000000"), "--canaries")


def test_17_the_right_problem_is_named(tmp_path, trained):
    _exit_2(_run("config", "--config", str(tmp_path)), "is a folder")
    _exit_2(_run("config", "--config", "/dev/zero"), "not a regular file")
    (tmp_path / "f").write_text("x")
    _exit_2(_run("attack", "--run", str(tmp_path / "f"), "--type", "membership"), "is a file")
    run = _copy(trained, tmp_path / "r")
    _exit_2(_run("audit", *_sets(), "--out", str(run), "--canaries", "8"), "ordinary run")
    (tmp_path / "aud" / "audit").mkdir(parents=True)
    (tmp_path / "aud" / "audit" / "canaries.safetensors").write_bytes(b"x")
    _exit_2(_run("train", *_sets(), "--out", str(tmp_path / "aud")), "audit run")


def test_18_error_echoes_are_capped():
    bomb = "[&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], " \
           "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], " \
           "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f]]"  # fmt: skip
    r = _run("config", "--set", f"data.root={bomb}")
    assert r.exit_code == 2 and len(r.stderr) < 1200, len(r.stderr)
    r = _run("config", "--set", "data.clients=" + "x" * 100_000)
    assert r.exit_code == 2 and len(r.stderr) < 1200


def test_19_mappings_merge_key_by_key_and_duplicate_keys_are_refused(tmp_path):
    cfg = tiny_config("data.image_size=8", "data={name: digits, clients: 2}")
    assert cfg.data.image_size == 8 and cfg.data.clients == 2
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\nseed: 2\n")
    _exit_2(_run("config", "--config", str(f)), "duplicate key")
