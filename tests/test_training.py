"""Training loop: checkpoints, resume == uninterrupted (bitwise), reproducibility, sampling."""

import json
import math

import pytest
import torch

from collafuse_privacy.io import load_tensors
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.sampling import sample_run
from collafuse_privacy.training import train
from collafuse_privacy.view import ServerView, list_shards

from conftest import TINY, tiny_config


class Interrupt(Exception):
    pass


def _killed_then_resumed(cfg, run_dir, at: int = 5, **kw) -> dict:
    """Train ``cfg`` into ``run_dir``, killed after round ``at`` (its tail beyond the last checkpoint is
    lost and redone), then resumed to the end; returns the resumed ``train``'s result."""

    def stop(step):
        if step == at:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, run_dir, device="cpu", quiet=True, on_round=stop, **kw)
    return train(cfg, run_dir, device="cpu", quiet=True)


def _final_state(run_dir):
    ck = run_dir / "checkpoints"
    d = ck / json.loads((ck / "latest.json").read_text())["dir"]
    tensors = {f.name: load_tensors(f) for f in sorted(d.glob("*.safetensors"))}
    shards = {f.name: load_tensors(f) for f in list_shards(run_dir / "server_view" / "train")}
    truth = {f.name: load_tensors(f) for f in list_shards(run_dir / "ground_truth" / "train")}
    log = [json.loads(l) for l in (run_dir / "metrics" / "train.jsonl").read_text().splitlines()]
    for row in log:
        row.pop("seconds")
    return tensors, shards, truth, log


def _assert_same(a, b):
    (ta, sa, ga, la), (tb, sb, gb, lb) = a, b
    assert ta.keys() == tb.keys() and sa.keys() == sb.keys() and ga.keys() == gb.keys()
    for x, y in [(ta, tb), (sa, sb), (ga, gb)]:
        for name in x:
            for key in x[name]:
                assert torch.equal(x[name][key], y[name][key]), f"{name}:{key} differs"
    assert la == lb


@pytest.mark.parametrize("kind", ["cut-image", "shared-noise"])
def test_resume_equals_uninterrupted_bitwise(tmp_path, kind):
    over = [f"protocol.kind={kind}", "train.steps=7", "train.checkpoint_every=3", "record.shard_size=10"]
    if kind == "cut-image":
        over.append("protocol.fixed_noise=true")
    cfg = tiny_config(*over)
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)

    # killed after round 5, past the checkpoint at 3: the interrupted tail left log rows and maybe a
    # shard beyond the checkpoint, and rounds 4-5 are redone
    out = _killed_then_resumed(cfg, tmp_path / "resumed")
    assert out["steps"] == 7
    _assert_same(_final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed"))


def test_poisson_sampling_resumes_bitwise_and_is_recorded(tmp_path):
    over = ["train.sampling=poisson", "train.steps=7", "train.checkpoint_every=3", "record.shard_size=10"]
    cfg = tiny_config(*over)
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)

    _killed_then_resumed(cfg, tmp_path / "resumed")
    straight = _final_state(tmp_path / "straight")
    _assert_same(straight, _final_state(tmp_path / "resumed"))
    assert json.loads((tmp_path / "straight" / "server_view" / "meta.json").read_text())["sampling"] == "poisson"
    assert RunDir(tmp_path / "straight").config().train.sampling == "poisson"
    # Poisson batches: their sizes vary round to round (a shuffled batch is always train.batch_size)
    drawn = {n + s for row in straight[3] for n, s in zip(row["client_n"], row["sent"])}
    assert len(drawn) > 1
    train(tiny_config("train.steps=7"), tmp_path / "shuffle", device="cpu", quiet=True)
    log = _final_state(tmp_path / "shuffle")[3]
    assert {n + s for row in log for n, s in zip(row["client_n"], row["sent"])} == {8}


def test_extending_steps_equals_training_longer(tmp_path):
    train(tiny_config("train.steps=6"), tmp_path / "a", device="cpu", quiet=True)
    train(tiny_config("train.steps=4"), tmp_path / "b", device="cpu", quiet=True)
    train(tiny_config("train.steps=6"), tmp_path / "b", device="cpu", quiet=True)
    _assert_same(_final_state(tmp_path / "a"), _final_state(tmp_path / "b"))


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
    train(tiny_config(), tmp_path / "a", device="cpu", quiet=True)
    train(tiny_config(), tmp_path / "b", device="cpu", quiet=True)
    train(tiny_config("seed=1"), tmp_path / "c", device="cpu", quiet=True)
    _assert_same(_final_state(tmp_path / "a"), _final_state(tmp_path / "b"))
    a, c = _final_state(tmp_path / "a")[0], _final_state(tmp_path / "c")[0]
    assert not torch.equal(a["server.safetensors"]["conv_in.weight"], c["server.safetensors"]["conv_in.weight"])


def test_record_max_items_bounds_the_view(tmp_path):
    cfg = tiny_config("record.max_items=5", "protocol.cut_ratio=0.2")
    out = train(cfg, tmp_path / "run", device="cpu", quiet=True)
    assert out["messages"] > 0 and out["recorded"] == 5
    assert len(ServerView.load(tmp_path / "run")) == 5


def test_checkpoint_keeps_the_last_two(tmp_path):
    train(tiny_config("train.steps=8", "train.checkpoint_every=2"), tmp_path / "run", device="cpu", quiet=True)
    dirs = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir())
    assert dirs == ["step-00000006", "step-00000008"]


@pytest.mark.parametrize("kind,cut", [("cut-image", 0.5), ("shared-noise", 0.5), ("cut-image", 1.0), ("cut-image", 0.0)])
def test_collaborative_sampling_writes_grids_and_records_handover(tmp_path, kind, cut):
    cfg = tiny_config(f"protocol.kind={kind}", f"protocol.cut_ratio={cut}", "model.server_conditioning=client")
    run = tmp_path / "run"
    train(cfg, run, device="cpu", quiet=True)
    info = sample_run(run, n=5, device="cpu")
    assert info["n"] == 5
    for k in range(cfg.data.clients):
        x = load_tensors(run / "samples" / f"client-{k}.safetensors")["x0"]
        assert x.shape == (5, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
        assert (run / "samples" / f"grid-client-{k}.png").stat().st_size > 0
    view = ServerView.load(run)
    if cut == 1.0:
        assert view.handover is None  # the client draws its own noise; nothing crosses
    else:
        assert view.handover["h"].shape == (10, 1, 8, 8)
        assert view.handover["client"].tolist() == [0] * 5 + [1] * 5
    # sampling is seeded: same run, same samples
    first = load_tensors(run / "samples" / "client-0.safetensors")["x0"]
    sample_run(run, n=5, device="cpu")
    assert torch.equal(first, load_tensors(run / "samples" / "client-0.safetensors")["x0"])


def test_server_conditioning_labels_sends_labels(tmp_path):
    cfg = tiny_config("model.server_conditioning=labels", "protocol.cut_ratio=0.3")
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    view = ServerView.load(tmp_path / "run")
    assert "labels" in view.messages and view.messages["labels"].max() <= 9
    sample_run(tmp_path / "run", n=3, device="cpu")
    # the labels cross in the clear: no finite epsilon for the view (replace-one replaces the label too)
    priv = RunDir(tmp_path / "run").metrics("privacy").view
    assert math.isinf(priv.epsilon) and math.isinf(priv.mu) and "labels" in priv.note
    assert math.isinf(view.protocol.release_mu(view.image_shape, 1))
    # the same run without labels has a finite one
    train(tiny_config("protocol.cut_ratio=0.3"), tmp_path / "plain", device="cpu", quiet=True)
    assert math.isfinite(RunDir(tmp_path / "plain").metrics("privacy").view.epsilon)


def test_target_epsilon_with_labels_is_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from collafuse_privacy.cli import main

    sets = [a for kv in TINY + ["model.server_conditioning=labels", "protocol.target_epsilon=8"] for a in ("--set", kv)]
    r = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run"), "--quiet", *sets])
    assert r.exit_code == 2 and "labels cross the cut in the clear" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run" / "checkpoints").exists()
