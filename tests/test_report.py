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
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.schemas import (BestMethod, BestReconstruction, BurdenReport, ClientDisclosure,
                                           ClientDPReport, ClientQuality, DisclosureFigures, GDPSection,
                                           MembershipMethod, MembershipReport, MembershipResult, PooledQuality,
                                           PrivacyReport, QUALITY_FORMAT, QualityFloor, QualityReport, QualityRun,
                                           ReconstructionMethod, ReconstructionReport, ReleasePrivacy, ViewPrivacy)


def iv(v, w=0.02):
    return Interval(v, v - w, v + w, 0.95, 200)


def quality(c: float, fid: float, run: str, sha: str = "ab" * 32) -> QualityReport:
    """A metrics/quality.json with intervals and the floor, in the schema evaluate writes."""
    def pooled(f):
        return PooledQuality(f, f / 1000, 0.0, 16, 16, fid_ci=iv(f, 1.5), kid_ci=iv(f / 1000, 0.001))

    def client(k, f):
        return ClientQuality(k, f, 0.0, 0.0, 8, 8, fid_ci=iv(f, 2.0), kid_ci=iv(0.0, 0.002))

    return QualityReport(
        extractor=f"classifier-test-{sha[:12]}", extractor_sha256=sha, extractor_note="", n_samples_per_client=8,
        runs=[QualityRun(cut_ratio=c, t_c=int(round(c * 100)), run_dir=run, pooled=pooled(fid),
                         per_client=[client(0, fid + 1), client(1, fid - 1)])],
        floor=QualityFloor("floor: members vs held-out", per_client=[client(0, 3.0), client(1, 4.0)], pooled=pooled(1.25)),
        disclosure=[ClientDisclosure(0, training=DisclosureFigures(kid=0.1, pixel_mse=0.5))], format=QUALITY_FORMAT)


def fake_run(root: Path, name: str, c: float, fid: float, tpr: float, ssim: float, eps, dp: bool = False) -> Path:
    """A run directory with hand-written metrics files in the schemas the stages write."""
    d = root / name
    (d / "metrics").mkdir(parents=True)
    cfg = {"seed": 0, "protocol": {"kind": "cut-image", "cut_ratio": c, "fixed_noise": False},
           "defense": {"client_dp": {"enabled": dp, "noise_multiplier": 1.0 if dp else None}}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rd = RunDir(d)
    t_c = int(round(c * 100))
    rd.write_metrics("quality", quality(c, fid, str(d)))
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
    assert "12.00 [10.50, 13.50]" in md and "0.200 [0.180, 0.220]" in md and "classifier-test" in md
    assert "KID (raw MMD^2)" in md and "0.012 [0.011, 0.013]" in md  # KID printed with its unit
    assert "floor: members vs held-out (4 settings) | - | 16 | 1.25 [-0.25, 2.75] | 0.00125 [0.00025, 0.00225]" in md
    assert "sha256 abababababab" in md
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


def test_dominance_is_decided_on_the_intervals():
    """Dominated only when the other setting is better beyond the intervals on one axis and worse on
    neither: a difference inside the intervals dominates nothing, in either direction."""
    from collafuse_privacy.eval.report.analyse import dominated_beyond_intervals

    a = ((0.50, 0.48, 0.52), (10.0, 9.0, 11.0))
    b = ((0.51, 0.49, 0.53), (20.0, 19.0, 21.0))  # same disclosure within noise, FID worse beyond it
    c = ((0.90, 0.88, 0.92), (10.5, 9.5, 11.5))  # same FID within noise, disclosure worse beyond it
    d = ((0.30, 0.28, 0.32), (30.0, 29.0, 31.0))  # less disclosure, worse FID: a trade, not dominated
    assert dominated_beyond_intervals([a, b, c, d]) == {1: 0, 2: 0}
    e = ((0.50, 0.48, 0.52), (11.5, 10.5, 12.5))  # FID overlaps a's: neither dominates the other
    assert dominated_beyond_intervals([a, e]) == {}


def test_report_refuses_two_extractors(runs, tmp_path):
    other = quality(0.5, 12.0, str(runs[1]), sha="cd" * 32)
    RunDir(runs[1]).write_metrics("quality", other)
    with pytest.raises(UserError, match="2 different feature extractors cannot share a table") as exc:
        write_report(runs, out=tmp_path / "r", screenshot=False, log=lambda m: None)
    assert "\n" not in str(exc.value) and "abababababab" in str(exc.value) and "cdcdcdcdcdcd" in str(exc.value)
    r = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "different feature extractors" in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    # The same extractor again: the report is written.
    RunDir(runs[1]).write_metrics("quality", quality(0.5, 12.0, str(runs[1])))
    write_report(runs, out=tmp_path / "r3", screenshot=False, log=lambda m: None)


def test_old_quality_files_are_refused_in_one_line(runs, tmp_path):
    f = runs[0] / "metrics" / "quality.json"
    q = json.loads(f.read_text())
    for key in ("format", "floor", "extractor_sha256"):
        del q[key]
    for c in q["runs"][0]["per_client"] + [q["runs"][0]["pooled"]]:
        del c["fid_ci"], c["kid_ci"]
    f.write_text(json.dumps(q))
    with pytest.raises(UserError, match="older collafuse-privacy .*rerun evaluate") as exc:
        collect([runs[0]])
    assert "\n" not in str(exc.value) and "quality.json" in str(exc.value)


def test_across_seeds_shows_fid_and_kid_mean_and_spread(tmp_path):
    from collafuse_privacy.eval.report import tables

    cells = collect([fake_run(tmp_path, f"s{i}", 0.5, 10.0 + i, 0.2, 0.4, 800.0) for i in range(3)])
    for c in cells:
        c.setting = "c=0.5"
    seeds = tables(cells)["seeds"]
    assert "KID (raw MMD^2)" in " ".join(seeds[0])
    row = seeds[1]
    assert row[:2] == ["c=0.5", "3"] and row[2].startswith("11.00 [") and row[3].startswith("0.011 [")
    assert row[-1].startswith("3.00 / 0.002 / ")  # median bootstrap widths of FID and of KID


def test_a_folder_never_trained_is_not_listed_as_done(tmp_path):
    """A config and nothing else (a train killed before its first checkpoint, a Flower `prepare`
    folder): no intact checkpoint and no metrics, so the report says "not trained"."""
    import shutil

    d = fake_run(tmp_path, "r", 0.5, 10.0, 0.2, 0.4, 800.0)
    shutil.rmtree(d / "metrics")
    (cell,) = collect([d])
    assert cell.status == "not trained" and "no checkpoint" in cell.error


def test_a_fedavg_cell_is_read_against_the_collafuse_ends(tmp_path):
    """A fedavg cell (issue 26): its headline membership is the attack on client 0's upload (in the
    server's view), the reading places its FID against c = 0's interval and names its epsilon as the
    clients' DP-SGD one, and the GDP reading leaves it out."""
    from collafuse_privacy.eval.report import reading, tables

    c0, c1 = fake_run(tmp_path, "c0", 0.0, 10.0, 0.9, 0.99, "inf"), fake_run(tmp_path, "c1", 1.0, 20.0, 0.0, 0.0, 0.0)
    fa = fake_run(tmp_path, "fa", 1.0, 14.0, 0.0, 0.0, 0.0, dp=True)
    cfg = yaml.safe_load((fa / "config.yaml").read_text())
    cfg["protocol"]["kind"] = "fedavg"
    (fa / "config.yaml").write_text(yaml.safe_dump(cfg))
    rd = RunDir(fa)
    up = MembershipMethod(True, auc=iv(0.45), tpr_at_1pct_fpr=iv(0.03), tpr_at_01pct_fpr=iv(0.01))  # below chance
    glob = MembershipMethod(True, auc=iv(0.6), tpr_at_1pct_fpr=iv(0.05), tpr_at_01pct_fpr=iv(0.01))

    def result(m, gdp):
        return MembershipResult(protocol="fedavg", cut_ratio=1.0, t_c=100, timesteps=100, fixed_noise=False,
                                n_members=10, n_nonmembers=10, methods={"loss": m}, gdp=gdp,
                                best=BestMethod("loss", "a calibration half", auc=m.auc, tpr_at_1pct_fpr=m.tpr_at_1pct_fpr))
    rd.write_metrics("membership", MembershipReport(targets={"server": result(glob, None), "client:0": result(up, None)}))
    p = rd.metrics("privacy")
    rd.write_metrics("privacy", dataclasses.replace(p, protocol="fedavg", view=dataclasses.replace(p.view, epsilon=4.2)))
    cells = collect([c0, c1, fa])
    f = next(c for c in cells if c.protocol == "fedavg")
    assert f.view_target() == "client:0" and f.best_membership(key="auc")[1]["value"] == 0.45
    words = reading(cells)
    line = next(w for w in words if w.startswith("FedAvg"))
    assert "2.5 above the interval of CollaFuse c = 0 (10.0 [8.5, 11.5])" in line and "local-only c = 1: 20.0" in line
    assert "upload 0.450 [0.430, 0.470] (loss)" in line and "4.2 (the clients' DP-SGD epsilon" in line
    assert not any("[" + f.label + "] eps=" in w for w in words if w.startswith("Formal guarantee"))
    # an AUC below chance is chance: c = 1 (nothing sent) is dominated by the FedAvg cell on FID alone
    mia = next(w for w in words if w.startswith("Against membership AUC"))
    assert "c1 (by fa)" in mia and "c0 (by" not in mia  # c = 0's FID interval overlaps fa's: a trade
    paper = tables(cells)["paper"]
    assert any("(loss, upload of client 0)" in cell for row in paper for cell in row)
    # with several training seeds a FedAvg cell is read against the c = 0 cell of its own seed
    for c in cells:
        c.seed = 1 if c.label == "fa" else 0
    line = next(w for w in reading(cells) if w.startswith("FedAvg"))
    assert "no CollaFuse c = 0 cell trained with seed 1" in line and "above the interval" not in line
    c0b = dataclasses.replace(next(c for c in cells if c.label == "c0"), seed=1, label="c0 seed 1", fid=13.0,
                              fid_ci={"value": 13.0, "lo": 12.0, "hi": 14.5})  # fmt: skip
    line = next(w for w in reading(cells + [c0b]) if w.startswith("FedAvg"))
    assert "inside the interval of CollaFuse c = 0 (13.0 [12.0, 14.5], seed 1)" in line
