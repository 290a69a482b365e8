"""The report reads every number from the runs' metrics files, and says when one is missing."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.errors import UserError
from collafuse_privacy.eval.report import collect, knee, pareto_front, write_report
from collafuse_privacy.numbers import Interval
from collafuse_privacy.rundir import (BestMethod, BestReconstruction, BurdenReport, ClientDisclosure, ClientDPReport, ClientQuality, DisclosureFigures,
                                      GDPSection, MembershipMethod, MembershipReport, MembershipResult, PooledQuality,
                                      PrivacyReport, QualityReport, QualityRun, ReconstructionMethod,
                                      ReconstructionReport, ReleasePrivacy, RunDir, ViewPrivacy)


def iv(v, w=0.02):
    return Interval(v, v - w, v + w, 0.95, 200)


def fake_run(root: Path, name: str, c: float, fid: float, tpr: float, ssim: float, eps, dp: bool = False) -> Path:
    """A run directory with hand-written metrics files in the schemas the stages write."""
    d = root / name
    (d / "metrics").mkdir(parents=True)
    cfg = {"seed": 0, "protocol": {"kind": "cut-image", "cut_ratio": c, "fixed_noise": False},
           "defense": {"client_dp": {"enabled": dp, "noise_multiplier": 1.0 if dp else None}}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rd = RunDir(d)
    t_c = int(round(c * 100))
    rd.write_metrics("quality", QualityReport(
        extractor="classifier-test", extractor_note="", n_samples_per_client=8,
        runs=[QualityRun(cut_ratio=c, t_c=t_c, run_dir=str(d), pooled=PooledQuality(fid, fid / 1000, 0.0, 16, 16),
                         per_client=[ClientQuality(0, fid + 1, 0.0, 0.0, 8, 8), ClientQuality(1, fid - 1, 0.0, 0.0, 8, 8)])],
        disclosure=[ClientDisclosure(0, training=DisclosureFigures(kid=0.1, pixel_mse=0.5))]))
    sent = c < 1
    method = (MembershipMethod(True, auc=iv(0.5 + tpr / 2), tpr_at_1pct_fpr=iv(tpr), tpr_at_01pct_fpr=iv(tpr / 2))
              if sent else MembershipMethod(False, reason="nothing sent"))
    gdp = GDPSection(releases_per_image=1, releases_counted="", mu_worst=3.0, mu_actual=1.0, mu_actual_median=1.0,
                     tpr_bound_at_1pct_fpr=1.0, tpr_bound_at_01pct_fpr=1.0)
    rd.write_metrics("membership", MembershipReport(targets={"server": MembershipResult(
        protocol="cut-image", cut_ratio=c, t_c=t_c, timesteps=100, fixed_noise=False, n_members=10, n_nonmembers=10,
        methods={"view-lrt": method}, gdp=gdp,
        best=BestMethod("view-lrt", "a calibration half", auc=iv(0.5 + tpr / 2), tpr_at_1pct_fpr=iv(tpr)) if sent else None)}))
    rd.write_metrics("reconstruction", ReconstructionReport(
        protocol="cut-image", cut_ratio=c, t_c=t_c, timesteps=100, fixed_noise=False, sent=sent, n_rows=10, cap=10,
        seed=0, reason=None if sent else "c = 1: nothing was sent",
        methods={"rescale": ReconstructionMethod(True, ssim=iv(ssim), psnr=iv(10 + 20 * ssim), mse=iv(1 - ssim),
                                                 identification=iv(ssim), chance=0.01)} if sent else {},
        best=BestReconstruction("rescale", "half of the rows", ssim=iv(ssim), psnr=iv(10 + 20 * ssim)) if sent else None))
    rd.write_metrics("privacy", PrivacyReport(
        protocol="cut-image", cut_ratio=c, t_c=t_c, timesteps=100, step=1,
        view=ViewPrivacy(mu=float("inf") if c == 0 else 3.0, epsilon=float(eps), delta=1e-5, releases_per_image=1,
                         fixed_noise=False, per_release=ReleasePrivacy(3.0, float(eps)), epochs=1.0,
                         sensitivity_l2=16.0, note=""),
        client_dp=ClientDPReport(enabled=dp, delta=1e-5, epsilon=4.2 if dp else float("inf"), steps=1, note="",
                                 noise_multiplier=1.0 if dp else None)))
    rd.write_metrics("burden", {f.name: 0 for f in dataclasses.fields(BurdenReport) if f.name not in ("device", "schema")}
                     | {"t_c": t_c, "sampling_flop_ratio": c, "bytes_sent_per_training_image": 1024.0 * (1 - c)})
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
