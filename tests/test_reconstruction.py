"""Reconstruction attacks (issue 4): registry contract, DDPM step vs diffusers, and the acceptance
criteria on tiny runs (digits 8x8, micro UNet, T = 20)."""

import json
import math
import shutil

import pytest
import torch
from click.testing import CliRunner

from collafuse_privacy.attacks.reconstruction import ReconstructionAttack, get, make, names, register
from collafuse_privacy.attacks.reconstruction.denoiser import ancestral_sample, clear_cache, ddpm_jump
from collafuse_privacy.cli import main
from collafuse_privacy.protocol import Cut
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.errors import UserError
from collafuse_privacy.eval.reconstruction import format_reconstruction
from collafuse_privacy.eval.reconstruction import run_reconstruction as _run_reconstruction
from collafuse_privacy.sampling import sample_run
from collafuse_privacy.view import ServerView

from conftest import tiny_config

METHODS = ["exact", "rescale", "learned", "posterior", "average", "inference"]
# Small training budgets for the attack models (the defaults are sized for 16x16 runs).
FAST = {"learned": {"steps": 30}, "average": {"steps": 30},
        "posterior": {"steps": 30, "sample_steps": 5}, "inference": {"steps": 30, "sample_steps": 5}}  # fmt: skip
C02 = ("train.steps=30", "protocol.cut_ratio=0.2")


def run_reconstruction(*args, **kwargs) -> dict:
    """The result as metrics/reconstruction.json stores it."""
    from collafuse_privacy.typed import to_data

    return to_data(_run_reconstruction(*args, **kwargs), json_numbers=True)


def _copy(run, dest):
    shutil.copytree(run, dest)
    return dest


def _val(iv):
    return float(iv["value"])  # "inf" parses


# ---------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------


def test_registry_contract():
    assert names() == METHODS
    with pytest.raises(UserError) as e:
        get("nope")
    assert "unknown reconstruction method 'nope'" in str(e.value)
    assert "known: " + ", ".join(METHODS) in str(e.value)
    with pytest.raises(ValueError, match="already registered"):
        register("rescale")(type("Again", (ReconstructionAttack,), {}))
    with pytest.raises(UserError, match="has no option 'colour'"):
        make("rescale", colour=3)
    with pytest.raises(UserError, match="denoiser must be"):
        make("average", denoiser="median")
    with pytest.raises(UserError, match="unknown reconstruction method"):
        run_reconstruction("/nonexistent", methods=["rescale", "nope"])


def test_ddpm_jump_equals_diffusers_step():
    cfg = tiny_config()
    cut = Cut.from_config(cfg)
    sched, ab = cut.scheduler(), cut.abar_table
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(5, 1, 8, 8, generator=g) * 2, torch.randn(5, 1, 8, 8, generator=g)
    for t in (0, 3, 11, 19):
        ref = sched.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        ours = ddpm_jump(x, eps, ab[t + 1].expand(5), ab[t].expand(5), noise)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_ancestral_sample_clean_rows_and_levels():
    """Rows at level -1 are returned as they are; every output is in [-1, 1]."""
    from collafuse_privacy.models import build_unet

    cfg = tiny_config()
    abar = Cut.from_config(cfg).abar
    model = build_unet("micro", 8, 1).eval()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    out = ancestral_sample(model, x, torch.tensor([-1, -1, 5, 19]), abar, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:2], x[:2])
    assert out.abs().max() <= 1


# ---------------------------------------------------------------------------
# Acceptance
# ---------------------------------------------------------------------------


def test_exact_recovers_shared_noise_images(tiny_run, tmp_path):
    """Acceptance 1: shared-noise + exact -> PSNR above 60 dB (float32 recording, the fixture's)."""
    run = _copy(tiny_run("train.steps=30", "protocol.kind=shared-noise", "protocol.cut_ratio=0.2"), tmp_path / "r")
    r = run_reconstruction(run, methods=["exact", "rescale"], figure=False, log=lambda m: None)
    ex = r["methods"]["exact"]
    assert ex["applicable"] and ex["n"] == r["n_scored"] > 20
    assert _val(ex["psnr"]) > 60 and _val(ex["psnr"]) > _val(r["methods"]["rescale"]["psnr"]) + 30
    assert _val(ex["identification"]) == 1.0


def test_quality_falls_with_cut_ratio_and_c1_sends_nothing(tiny_run, tmp_path):
    """Acceptance 2: SSIM(c = 0.2) > SSIM(c = 0.8) for rescale and learned; c = 1: nothing sent."""
    res = {}
    for c in (0.2, 0.8):
        run = _copy(tiny_run("train.steps=30", f"protocol.cut_ratio={c}"), tmp_path / f"c{c}")
        res[c] = run_reconstruction(run, methods=["rescale", "learned", "exact"], options=FAST, figure=False,
                                    log=lambda m: None)["methods"]  # fmt: skip
        assert not res[c]["exact"]["applicable"] and res[c]["exact"]["reason"] and res[c]["exact"]["ssim"] is None
    for m in ("rescale", "learned"):
        lo_small, hi_large = res[0.2][m]["ssim"]["lo"], res[0.8][m]["ssim"]["hi"]
        assert lo_small > hi_large, (m, res[0.2][m]["ssim"], res[0.8][m]["ssim"])
    run = _copy(tiny_run("train.steps=30", "protocol.cut_ratio=1.0"), tmp_path / "c1")
    r = run_reconstruction(run, log=lambda m: None)
    assert r["sent"] is False and "nothing was sent" in r["reason"] and r["figure"] is None
    assert all(not m["applicable"] and m["reason"] == r["reason"] and m["ssim"] is None for m in r["methods"].values())
    saved = json.loads((run / "metrics" / "reconstruction.json").read_text())
    assert saved["sent"] is False and all(m["mse"] is None for m in saved["methods"].values())
    assert "nothing was sent" in format_reconstruction(RunDir(run).metrics("reconstruction"))


AVG = ("data.max_images=300", "data.public_fraction=0.25", "train.steps=30", "train.batch_size=32",
       "protocol.cut_ratio=0.1")  # fmt: skip


def test_average_beats_single_release_only_with_fresh_noise(tiny_run, tmp_path):
    """Acceptance 3: ~9 fresh releases per image -> average beats rescale and learned on MSE;
    with fixed_noise (one distinct release per image) its advantage disappears."""
    opts = {"learned": {"steps": 60}, "average": {"steps": 60}}
    out = {}
    for fixed in ("false", "true"):
        run = _copy(tiny_run(*AVG, f"protocol.fixed_noise={fixed}"), tmp_path / fixed)
        out[fixed] = run_reconstruction(run, methods=["rescale", "learned", "average"], options=opts, cap=256,
                                        figure=False, log=lambda m: None)["methods"]  # fmt: skip
    fresh, fixed = out["false"], out["true"]
    assert fresh["average"]["linking"]["mean_true_releases"] > 5
    assert fresh["average"]["linking"]["mean_linked"] > 4 and fresh["average"]["linking"]["precision"] > 0.8
    best_single = min(fresh["rescale"]["mse"]["lo"], fresh["learned"]["mse"]["lo"])
    assert fresh["average"]["mse"]["hi"] < best_single
    assert _val(fresh["average"]["mse"]) < 0.5 * _val(fresh["learned"]["mse"])
    assert fixed["average"]["linking"]["mean_linked"] < 1.5
    assert _val(fixed["average"]["mse"]) > 0.9 * _val(fixed["learned"]["mse"])


def test_metrics_json_figure_and_cap(tiny_run, tmp_path):
    run = _copy(tiny_run(*C02), tmp_path / "r")
    sample_run(run, device="cpu")
    r = run_reconstruction(run, options=FAST, cap=64, log=lambda m: None)
    saved = json.loads((run / "metrics" / "reconstruction.json").read_text())
    assert saved == json.loads(json.dumps(r))
    for key in ("protocol", "cut_ratio", "t_c", "timesteps", "fixed_noise", "sent", "n_rows", "cap", "methods", "figure"):
        assert key in saved
    assert saved["cap"] == 64 and saved["n_scored"] == 64 < saved["n_rows"]
    assert (run / saved["figure"]).is_file()
    members = json.loads((run / "splits.json").read_text())["clients"]
    chance = sum(1 / len(c["members"]) for c in members) / len(members)
    for name, m in saved["methods"].items():
        if not m["applicable"]:
            assert name == "exact" and m["reason"]
            continue
        assert m["n"] == (64 if m["source"] == "messages" else saved["n_handover"])
        for metric in ("mse", "psnr", "ssim", "identification"):
            assert set(m[metric]) == {"value", "lo", "hi", "level", "n_boot"}
        assert m["lpips"] is None or set(m["lpips"]) == {"value", "lo", "hi", "level", "n_boot"}
        assert isinstance(m["lpips_status"], str) and m["seconds"] >= 0
        if m["source"] == "messages":
            assert math.isclose(m["chance"], chance, rel_tol=0.2)
    assert "average" in saved["methods"] and "linking" in saved["methods"]["average"]
    text = format_reconstruction(RunDir(run).metrics("reconstruction"))
    assert "rescale" in text and "not applicable" in text


def test_sampling_methods_score_the_posterior_mean_and_identify_with_a_sample(tiny_run):
    view = ServerView.load(tiny_run(*C02))
    out = make("posterior", steps=5, sample_steps=3, n_samples=3).fit(view).reconstruct(view, torch.arange(6))
    assert out.sample is not None and out.sample.shape == out.images.shape
    assert not torch.equal(out.identify, out.images) and torch.equal(out.identify, out.sample)
    assert out.info["n_samples"] == 3


def test_learned_is_reproducible(tiny_run):
    view = ServerView.load(tiny_run(*C02))
    rows = torch.arange(10)
    outs = []
    for _ in range(2):
        clear_cache()
        outs.append(make("learned", steps=5).fit(view).reconstruct(view, rows).images)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_cli_attack_reconstruction(tiny_run, tmp_path):
    run = _copy(tiny_run(*C02), tmp_path / "r")
    r = CliRunner().invoke(main, ["attack", "--run", str(run), "--type", "reconstruction", "--method", "nope"])
    assert r.exit_code == 2, r.output
    assert "known: " + ", ".join(METHODS) in r.stderr and "Traceback" not in r.output
    assert not (run / "metrics" / "reconstruction.json").exists()
    r = CliRunner().invoke(main, ["attack", "--run", str(run), "--type", "reconstruction", "--method", "rescale",
                                  "--method", "exact", "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "metrics" / "reconstruction.json").read_text())
    assert list(saved["methods"]) == ["rescale", "exact"] and saved["methods"]["rescale"]["applicable"]
    assert "rescale" in r.stdout
