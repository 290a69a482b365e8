"""`evaluate`: quality per client for c in {0, run, 1}, disclosure figures, client burden."""

import json

import pytest
import torch
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.eval.burden import measure_burden
from collafuse_privacy.run.directory import read_run_config
from collafuse_privacy.sampling import load_models
from collafuse_privacy.training import train

from conftest import TINY, tiny_config


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.8])
def test_client_sampling_flop_share_is_t_c_over_T(tmp_path, cut):
    cfg = tiny_config(f"protocol.cut_ratio={cut}", "diffusion.timesteps=40")
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    server, clients, _ = load_models(tmp_path / "run", cfg, torch.device("cpu"))
    b = measure_burden(cfg, server, clients[0], tmp_path / "run", batch=4, reps=1)
    share = cfg.t_c / cfg.diffusion.timesteps
    assert abs(b.sampling_flop_ratio - share) <= 0.05 * share
    assert b.sampling_client_flops_per_image > 0 and b.sampling_server_flops_per_image > 0
    # equal architectures: server + client FLOPs = one full local pass
    total = b.sampling_client_flops_per_image + b.sampling_server_flops_per_image
    assert abs(total - b.sampling_local_only_flops_per_image) <= 0.01 * total
    assert 0 < b.training_client_share < 1 and b.bytes_sent_per_training_image > 0


def test_evaluate_cli_reports_all_three_cut_ratios(tmp_path, monkeypatch, empty_hub):
    monkeypatch.setenv("COLLAFUSE_CACHE", str(tmp_path / "cache"))  # no Inception weights: the offline path
    run = tmp_path / "run"
    sets = []
    for o in TINY + ["protocol.cut_ratio=0.5", "sample.n=8"]:
        sets += ["--set", o]
    assert CliRunner().invoke(main, ["train", "--out", str(run), "--quiet", *sets]).exit_code == 0
    r = CliRunner().invoke(main, ["evaluate", "--run", str(run)])
    assert r.exit_code == 0, r.output
    assert "Inception weights not in the torch hub cache" in r.stderr
    q = json.loads((run / "metrics" / "quality.json").read_text())
    assert sorted(x["cut_ratio"] for x in q["runs"]) == [0.0, 0.5, 1.0]
    assert q["extractor"].startswith("classifier")
    for x in q["runs"] + [q["floor"]]:
        assert len(x["per_client"]) == 2 and all(c["fid"] >= 0 for c in x["per_client"])
        for c in x["per_client"] + [x["pooled"]]:
            for key, value in (("fid_ci", c["fid"]), ("kid_ci", c["kid"])):
                ci = c[key]
                assert ci["lo"] <= value <= ci["hi"] and ci["n_boot"] > 0 and ci["level"] == 0.95
    # The floor: each client's members against its held-out images, as many as the samples scored.
    assert q["floor"]["label"] == "floor: members vs held-out"
    assert [c["n_samples"] for c in q["floor"]["per_client"]] == [8, 8] and q["floor"]["pooled"]["n_samples"] == 16
    assert q["floor"]["pooled"]["n_real"] == q["runs"][0]["pooled"]["n_real"]
    assert len(q["extractor_sha256"]) == 64 and q["extractor_sha256"][:12] in q["extractor"]
    assert "training" in q["disclosure"][0] and "inference" in q["disclosure"][0]
    b = json.loads((run / "metrics" / "burden.json").read_text())
    assert b["sampling_flop_ratio"] == pytest.approx(0.5, rel=0.05)
    assert "client burden" in r.stdout and "FID client 0" in r.stdout
    assert "floor: members vs held-out" in r.stdout and "KID (raw MMD^2) pooled" in r.stdout and " [" in r.stdout
    assert (tmp_path / "run-c0" / "checkpoints").is_dir() and (tmp_path / "run-c1" / "checkpoints").is_dir()
    assert read_run_config(tmp_path / "run-c1").protocol.cut_ratio == 1.0


def test_evaluate_untrained_run_is_a_user_error(tmp_path):
    r = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path / "none")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
