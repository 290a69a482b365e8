"""The report reads every number from the runs' metrics files, and says when one is missing."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.errors import UserError
from collafuse_privacy.eval.report import collect, knee, pareto_front, write_report


def iv(v, w=0.02):
    return {"value": v, "lo": v - w, "hi": v + w, "level": 0.95, "n_boot": 200}


def fake_run(root: Path, name: str, c: float, fid: float, tpr: float, ssim: float, eps, dp: bool = False) -> Path:
    """A run directory with hand-written metrics files in the schemas the stages write."""
    d = root / name
    (d / "metrics").mkdir(parents=True)
    cfg = {"seed": 0, "protocol": {"kind": "cut-image", "cut_ratio": c, "fixed_noise": False},
           "defense": {"client_dp": {"enabled": dp, "noise_multiplier": 1.0 if dp else None}}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    t_c = int(round(c * 100))
    (d / "metrics" / "quality.json").write_text(json.dumps({
        "extractor": "classifier-test", "runs": [{"cut_ratio": c, "t_c": t_c, "pooled": {"fid": fid, "kid": fid / 1000},
                                                  "per_client": [{"client": 0, "fid": fid + 1}, {"client": 1, "fid": fid - 1}]}],
        "disclosure": [{"client": 0, "training": {"kid": 0.1, "pixel_mse": 0.5}}]}))
    sent = c < 1
    (d / "metrics" / "membership.json").write_text(json.dumps({"server": {
        "t_c": t_c, "methods": {"view-lrt": {"applicable": sent, **({"auc": iv(0.5 + tpr / 2), "tpr_at_1pct_fpr": iv(tpr),
                                                                      "tpr_at_0.1pct_fpr": iv(tpr / 2)} if sent else {"reason": "nothing sent"})}},
        "gdp": {"tpr_bound_at_1pct_fpr": 1.0}}}))
    (d / "metrics" / "reconstruction.json").write_text(json.dumps({
        "t_c": t_c, "sent": sent, **({} if sent else {"reason": "c = 1: nothing was sent"}),
        "methods": {"rescale": {"applicable": True, "ssim": iv(ssim), "psnr": iv(10 + 20 * ssim), "mse": iv(1 - ssim),
                                "identification": iv(ssim), "chance": 0.01}} if sent else {}}))
    (d / "metrics" / "privacy.json").write_text(json.dumps({"t_c": t_c, "view": {"mu": "inf" if c == 0 else 3.0, "epsilon": eps, "delta": 1e-5},
                                                            "client_dp": {"enabled": dp, "epsilon": 4.2 if dp else None}}))
    (d / "metrics" / "burden.json").write_text(json.dumps({"t_c": t_c, "sampling_flop_ratio": c, "bytes_sent_per_training_image": 1024.0 * (1 - c)}))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    return [
        fake_run(root, "c0", 0.0, 10.0, 0.9, 0.99, "inf"),
        fake_run(root, "c05", 0.5, 12.0, 0.2, 0.40, 800.0),
        fake_run(root, "c05dp", 0.5, 30.0, 0.25, 0.45, 800.0, dp=True),
        fake_run(root, "c1", 1.0, 20.0, 0.0, 0.0, 0.0),
    ]


def test_report_numbers_come_from_metrics_files(runs, tmp_path):
    out = tmp_path / "report"
    res = write_report(runs, out=out, screenshot=False, log=lambda m: None)
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert (out / "figures" / "tradeoff.png").stat().st_size > 1000
    assert "12.00" in md and "0.200 [0.180, 0.220]" in md and "classifier-test" in md
    assert "nothing sent" in md
    assert "data:image/png;base64," in page and "<script" not in page  # self-contained, no scripts
    rows = {r["label"]: r for r in res["rows"]}
    assert rows["c05"]["fid"] == 12.0 and rows["c05"]["mia[server].view-lrt.tpr1"] == pytest.approx(0.2)
    # c05dp is dominated by c05 (higher FID, higher TPR): the reading says so
    assert any("dominated" in w and "c05dp" in w for w in res["reading"])

    # Change one metrics file: the report changes with it.
    q = json.loads((runs[1] / "metrics" / "quality.json").read_text())
    q["runs"][0]["pooled"]["fid"] = 17.25
    (runs[1] / "metrics" / "quality.json").write_text(json.dumps(q))
    write_report(runs, out=out, screenshot=False, log=lambda m: None)
    md2 = (out / "report.md").read_text()
    assert "17.25" in md2 and md2 != md


def test_missing_metrics_are_shown_missing(tmp_path):
    d = tmp_path / "bare"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"protocol": {"kind": "cut-image", "cut_ratio": 0.3}}))
    res = write_report([d], out=tmp_path / "r", screenshot=False, log=lambda m: None)
    row = res["rows"][0]
    assert row["fid"] is None and row["view_epsilon"] is None
    assert "n/a" in (tmp_path / "r" / "report.md").read_text()


def test_bad_directories_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a run directory"):
        collect([tmp_path / "empty"])
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "not a directory" in r.output


def test_pareto_front_and_knee():
    pts = [(0.0, 10.0), (0.1, 4.0), (0.5, 2.0), (1.0, 1.9), (0.6, 5.0)]
    front = pareto_front(pts)
    assert front == [0, 1, 2, 3]  # (0.6, 5) is dominated by (0.5, 2)
    assert knee(pts, front) == 1  # the big drop in FID for little disclosure
