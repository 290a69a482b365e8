"""Statistics an auditor can trust (issue 12): best-of choices made on held-out data, intervals
across training seeds, adjacency and failure probabilities stated with the formal numbers."""

import math

import numpy as np
import pytest

from collafuse_privacy.eval.membership import best_method
from collafuse_privacy.eval.roc import auc
from collafuse_privacy.orchestration import load_sweep

from test_sweep import sweep_file


def test_the_strongest_method_is_chosen_on_one_half_and_scored_on_the_other():
    """Ten attacks without any signal: the largest of their ten AUCs is biased upwards; the
    method chosen on a calibration half and scored on the other half is not."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)].astype(int)
    biased, covered = [], 0
    for trial in range(10):
        scores = {f"m{i}": rng.normal(size=400) for i in range(10)}
        biased.append(max(auc(s, y) for s in scores.values()))
        b = best_method(scores, y, n_boot=200, seed=trial)
        covered += b.auc.lo <= 0.5 <= b.auc.hi
        assert "calibration half" in b.selected_by
    assert np.mean(biased) > 0.54  # what a best-of on the scored data reports
    assert covered >= 8


def test_seeds_replicate_every_setting(tmp_path):
    s = load_sweep(sweep_file(tmp_path), tmp_path / "o", seeds=3)
    assert len(s.cells) == 12 and sorted({c.config["seed"] for c in s.cells}) == [0, 1, 2]
    by_setting = {}
    for c in s.cells:
        by_setting.setdefault(c.setting, []).append(c)
        assert c.label.endswith(f"seed={c.config['seed']}") and "seed" not in c.setting
    assert len(by_setting) == 4 and all(len(v) == 3 for v in by_setting.values())


def test_across_seed_intervals_in_the_report():
    from collafuse_privacy.eval.report.analyse import across_seeds
    from collafuse_privacy.eval.report.collect import CellResult

    cells = []
    for seed, (fid, tpr) in enumerate([(10.0, 0.2), (12.0, 0.3), (11.0, 0.25)]):
        c = CellResult(label=f"c=0.5 seed={seed}", run_dir=None, setting="c=0.5", fid=fid)
        c.membership_best["server"] = {"method": "view-lrt", "tpr1": {"value": tpr, "lo": tpr - 0.1, "hi": tpr + 0.1},
                                       "auc": {"value": 0.6, "lo": 0.55, "hi": 0.65}}
        cells.append(c)
    (g,) = across_seeds(cells)
    assert g["seeds"] == 3 and g["fid"]["mean"] == pytest.approx(11.0)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert g["fid"]["hi"] - g["fid"]["mean"] == pytest.approx(half, rel=1e-5)
    assert g["tpr1"]["bootstrap_width"] == pytest.approx(0.2)


def test_privacy_states_adjacency_and_the_release_bounds_failure_probability():
    from collafuse_privacy.defenses.accounting import POISSON_TAIL
    from collafuse_privacy.defenses.privacy import compute_privacy, format_privacy

    from conftest import tiny_config

    cfg = tiny_config("defense.client_dp.enabled=true", "defense.client_dp.noise_multiplier=1.0")
    rep = compute_privacy(cfg, (1, 8, 8), release_counts=None, dp_states=None, n_members=[50, 50], steps=10)
    assert "replace-one" in rep.view.adjacency and "add/remove" in rep.client_dp.adjacency
    # releases bounded before training under Poisson sampling: the bound's failure probability joins delta
    assert rep.view.delta_release_bound == POISSON_TAIL
    assert rep.view.delta == pytest.approx(cfg.defense.client_dp.delta + POISSON_TAIL)
    text = format_privacy(rep)
    assert "replace-one" in text and "the chance that the release bound fails" in text
    assert "secrets.derive_from_seed" in text  # the test config derives its secrets: the report says so
