"""Reliability (issue 13): no silent NaN, one writer per run, outputs complete or absent, OS
errors as one line, bounded resources, image depths, reports of the wrong shape, threads."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.errors import UserError
from collafuse_privacy.training import train

from conftest import TINY, tiny_config


def _run(*args):
    return CliRunner().invoke(main, list(args))


def _sets(*overrides):
    out = []
    for o in list(TINY) + list(overrides):
        out += ["--set", o]
    return out


def _one_line_exit_2(r, words):
    """Exit code 2, no traceback, and the problem in one ``error:`` line (progress lines of the
    command before it are fine)."""
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.stderr
    assert words in errors[0], errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("rel") / "run"
    train(tiny_config("train.steps=4"), run, device="cpu", quiet=True)
    return run


def _copy(run, dest):
    import shutil

    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


# ---- finite numbers --------------------------------------------------------------------


@pytest.mark.parametrize("override", ["protocol.cut_ratio=.nan", "train.lr=.inf", "train.grad_clip=.nan"])
def test_config_rejects_nan_and_inf(tmp_path, override):
    _one_line_exit_2(_run("train", "--out", str(tmp_path / "r"), *_sets(override)), "must be a finite number")
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    run = tmp_path / "r"
    r = _run("train", "--out", str(run), "--quiet", *_sets("train.lr=1e30", "train.steps=6", "train.checkpoint_every=1"))
    _one_line_exit_2(r, "loss is")
    assert "training stopped" in r.stderr and "lower train.lr" in r.stderr
    rows = [json.loads(l) for l in (run / "metrics" / "train.jsonl").read_text().splitlines()]
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert len(rows) == latest < 6  # the bad round left no log row and no checkpoint
    for d in (run / "checkpoints").glob("step-*"):
        for f in d.glob("*.safetensors"):
            from collafuse_privacy.io import load_tensors

            assert all(torch.isfinite(t).all() for t in load_tensors(f).values())


def test_schedules_stay_well_conditioned_at_small_t(tmp_path):
    """T = 20: the tail of the linear schedule is capped and, with ``sample.clip=x0`` (the tiny
    config's), every party's ``x0_hat`` is clipped as diffusers clips x0, so a 30-round model's
    hand-over images and samples stay in range."""
    from collafuse_privacy.protocol import Cut
    from collafuse_privacy.sampling import read_samples, sample_run

    cfg = tiny_config("train.steps=30", "protocol.cut_ratio=0.3")
    assert float(Cut.from_config(cfg).abar[-1]) > 1e-6  # was 1e-9 before the cap
    train(cfg, tmp_path / "r", device="cpu", quiet=True)
    sample_run(tmp_path / "r", n=256, device="cpu")
    _, manifest = read_samples(tmp_path / "r")
    st = manifest.stats
    assert st.non_finite == 0 and st.problem() is None
    assert st.handover_max_abs < 1.5 * st.handover_range
    assert max(st.max_abs) <= 1.0 + 1e-4


def test_evaluate_refuses_images_out_of_range():
    from collafuse_privacy.sampling import SampleStats

    bad = SampleStats(max_abs=[45.0], outside=[0.3], non_finite=0)
    assert "leave [-1, 1] before the final clamp" in bad.problem()
    assert "non-finite" in SampleStats(max_abs=[1.0], outside=[0.0], non_finite=3).problem()
    h = SampleStats(max_abs=[1.0], outside=[0.0], non_finite=0, handover_max_abs=5e4, handover_range=2.0)
    assert "hand-over images reach" in h.problem()


def test_timesteps_too_few_to_reach_noise_are_refused(tmp_path):
    _one_line_exit_2(_run("train", "--out", str(tmp_path / "r"), *_sets("diffusion.timesteps=5")), "too few")


# ---- checkpoints ---------------------------------------------------------------------------


def test_missing_latest_json_resumes_from_the_newest_intact_checkpoint(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    (run / "checkpoints" / "latest.json").unlink()
    r = _run("train", "--out", str(run), *_sets("train.steps=6"))
    assert r.exit_code == 0, r.output
    assert "latest.json is missing: using step-00000004" in r.stderr and "resuming at round 4" in r.stderr
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 6


# ---- one writer per run ---------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holders_name(tmp_path, trained):
    from collafuse_privacy.lock import locked

    run = _copy(trained, tmp_path / "r")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # another process holds the run: this process's command is refused (the lock is per process)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time, sys
from collafuse_privacy.lock import locked
with locked({str(run)!r}, "train --out {run}"):
    print("held", flush=True)
    time.sleep(60)
"""], stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _run("train", "--out", str(run), *_sets("train.steps=6"))
        _one_line_exit_2(r, "is in use by another collafuse-privacy process (pid")
        r = _run("attack", "--run", str(run), "--type", "reconstruction", "--method", "rescale")
        _one_line_exit_2(r, "is in use by another collafuse-privacy process")
    finally:
        holder.kill()
        holder.wait()
    # the OS released it with the process: the next command proceeds, and is re-entrant in-process
    with locked(run):
        r = _run("attack", "--run", str(run), "--type", "reconstruction", "--method", "rescale")
    assert r.exit_code == 0, r.output


def test_stale_temporaries_are_removed_by_the_next_writer(tmp_path, trained):
    run = _copy(trained, tmp_path / "r")
    (run / "metrics" / ".privacy.json.abc123.tmp").write_text("half")
    (run / "server_view" / "train" / ".shard.tmp").write_text("half")
    r = _run("privacy", "--run", str(run))
    assert r.exit_code == 0, r.output
    assert not list(run.rglob(".*.tmp"))


# ---- outputs complete or absent ----------------------------------------------------------


def test_an_interrupted_sample_is_recognised(tmp_path, trained, monkeypatch):
    import collafuse_privacy.sampling as sampling
    from collafuse_privacy.eval.reconstruction import client_outputs
    from collafuse_privacy.view import ServerView

    run = _copy(trained, tmp_path / "r")
    sampling.sample_run(run, n=3, device="cpu")
    assert sampling.read_samples(run)[1].n == 3
    calls = {"n": 0}
    real = sampling.samples.save_tensors  # the module that writes the samples

    def dies_after_one(path, *a, **k):
        if calls["n"] == 1:
            raise KeyboardInterrupt  # killed while writing
        calls["n"] += 1
        return real(path, *a, **k)

    monkeypatch.setattr(sampling.samples, "save_tensors", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        sampling.sample_run(run, n=5, device="cpu")
    monkeypatch.undo()
    with pytest.raises(UserError, match="no complete samples"):
        sampling.read_samples(run)
    truth, why = client_outputs(run, ServerView.load(run))
    assert truth is None and "no complete samples" in why


def test_membership_json_names_its_own_scores_and_figure(tmp_path, trained):
    from collafuse_privacy.checkpoint import sha256
    from collafuse_privacy.eval.membership import run_membership
    from collafuse_privacy.eval.report.collect import read_run

    run = _copy(trained, tmp_path / "r")
    res = run_membership(run, methods=["view-lrt"], n_boot=50, log=lambda m: None)
    assert res.files == {res.scores: sha256(run / res.scores), res.figure: sha256(run / res.figure)}
    assert "roc-server" in read_run(run).figures
    (run / res.figure).write_bytes(b"a figure of an interrupted rerun")
    assert "roc-server" not in read_run(run).figures  # not shown as if it were this result's


# ---- OS errors -------------------------------------------------------------------------------


def test_os_errors_are_one_line_naming_the_path(tmp_path, trained, monkeypatch):
    run = _copy(trained, tmp_path / "r")
    # a folder the attack must write is not a folder: it fails before computing, naming it
    (run / "figures").write_text("not a folder")
    import collafuse_privacy.eval.membership as mem_mod

    def computed(*a, **k):
        raise AssertionError("the attack ran before the unwritable folder was found")

    monkeypatch.setattr(mem_mod, "_attack", computed)  # no attack is fitted or scored before the check
    r = _run("attack", "--run", str(run), "--type", "membership", "--method", "loss")
    assert r.exit_code == 2 and "Traceback" not in r.output and "figures" in r.stderr, r.output
    monkeypatch.undo()
    # a full disk during a checkpoint
    import collafuse_privacy.io as io_mod

    def full(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(io_mod, "atomic_write_bytes", full)
    r = _run("train", "--out", str(tmp_path / "new"), *_sets())
    _one_line_exit_2(r, "No space left on device")
    monkeypatch.undo()
    # report --out pointing at a file
    f = tmp_path / "a-file"
    f.write_text("x")
    _one_line_exit_2(_run("report", str(trained), "--out", str(f), "--no-screenshot"), "is not a folder")


# ---- resources -------------------------------------------------------------------------------


def test_a_run_that_cannot_fit_in_memory_is_refused(tmp_path):
    from collafuse_privacy.resources import available_memory

    if available_memory() is None:
        pytest.skip("no /proc/meminfo")
    over = ("data.name=mnist5k", "data.image_size=16", "data.clients=800", "train.batch_size=64", "model.preset=tiny")
    r = _run("train", "--out", str(tmp_path / "r"), *_sets(*over))
    _one_line_exit_2(r, "set train.memory_check=false")
    assert not (tmp_path / "r").exists()


# ---- image folders of every depth -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["uint16", "float", "float-out-of-range"])
def test_image_folder_high_depth_images(tmp_path, kind):
    from PIL import Image

    from collafuse_privacy.config import DataConfig
    from collafuse_privacy.data import load_dataset

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    for i in range(4):
        if kind == "uint16":
            Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / f"{i}.png")
        elif kind == "float":
            Image.fromarray(ramp, mode="F").save(tmp_path / f"{i}.tif")
        else:
            Image.fromarray(ramp * 3.0, mode="F").save(tmp_path / f"{i}.tif")
    cfg = DataConfig(name="image-folder", root=str(tmp_path), image_size=8, channels=1)
    if kind == "float-out-of-range":
        with pytest.raises(UserError, match="float images must lie in"):
            load_dataset(cfg)
        return
    x = load_dataset(cfg).images
    # the ramp maps to [-1, 1]: its mean is 0 (16-bit read as 8 bits saturates to ~+1; float as 'L' gives -1)
    assert abs(float(x.mean())) < 0.02 and float(x.max()) > 0.9 and float(x.min()) < -0.9


# ---- reports ---------------------------------------------------------------------------------


def test_reports_refuse_files_of_the_wrong_shape_and_count_a_folder_once(tmp_path, trained):
    from collafuse_privacy.eval.report import collect

    run = _copy(trained, tmp_path / "r")
    assert len(collect([run, run, tmp_path / "r"])) == 1
    (run / "metrics" / "membership.json").write_text("[]")
    _one_line_exit_2(_run("report", str(run), "--no-screenshot"), "expected a JSON object")
    (run / "metrics" / "membership.json").write_text(json.dumps({"schema": 1, "targets": {"server": {"t_c": "x"}}}))
    _one_line_exit_2(_run("report", str(run), "--no-screenshot"), "membership.json")
    (run / "metrics" / "membership.json").write_text(json.dumps({"schema": 99, "targets": {}}))
    _one_line_exit_2(_run("report", str(run), "--no-screenshot"), "newer collafuse-privacy")


# ---- threads and cosmetics -------------------------------------------------------------------


def test_every_command_sets_its_threads():
    from collafuse_privacy.cli import set_threads

    before = torch.get_num_threads()
    try:
        r = _run("--threads", "1", "config")
        assert r.exit_code == 0 and torch.get_num_threads() == 1
        assert set_threads(None) == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


def test_cosmetics(tmp_path, trained):
    from collafuse_privacy.eval.reconstruction import format_reconstruction, run_reconstruction
    from collafuse_privacy.eval.report import write_report

    res = write_report([trained], out=tmp_path / "rep", screenshot=False, log=lambda m: None)
    assert "1 setting." in (tmp_path / "rep" / "report.md").read_text()
    text = format_reconstruction(run_reconstruction(trained, methods=["rescale"], figure=False, log=lambda m: None))
    assert "LPIPS: LPIPS" not in text
    assert res["report_md"]
