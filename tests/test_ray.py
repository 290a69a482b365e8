"""``sweep --executor ray`` (the optional extra ``.[ray]``; skipped where Ray is not installed:
``pip install -e '.[ray]' && pytest tests/test_ray.py``)."""

import pytest
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.errors import UserError
from collafuse_privacy.orchestration import load_sweep, run_sweep

from test_sweep import sweep_file, table

pytestmark = pytest.mark.ray
STAGES = {"train": {}, "privacy": {}, "reconstruction": {"methods": ["rescale"]}, "membership": {"methods": ["view-lrt"]}}


def test_ray_sweep_gives_the_local_tables_digit_for_digit(tmp_path):
    pytest.importorskip("ray")
    path = sweep_file(tmp_path, steps=8, stages=STAGES)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_sweep(load_sweep(path, local), jobs=2, log=lambda m: None, quiet=True)
    idx = run_sweep(load_sweep(path, on_ray), log=lambda m: None, quiet=True, executor="ray",
                    ray={"cpus_per_cell": 1})  # fmt: skip
    assert all(c.status == "done" for c in idx.cells)
    assert table(local) == table(on_ray)
    # rerunning on Ray skips every finished cell
    logs = []
    run_sweep(load_sweep(path, on_ray), log=logs.append, quiet=True, executor="ray", ray={"cpus_per_cell": 1})
    assert any("4 already done" in m for m in logs)


def test_ray_bad_input_is_one_line_and_exit_2(tmp_path):
    path = sweep_file(tmp_path, steps=4, stages=STAGES)
    r = CliRunner().invoke(main, ["sweep", "--config", str(path), "--out", str(tmp_path / "o"), "--cpus-per-cell", "2"])
    assert r.exit_code == 2 and "apply to --executor ray" in r.output
    pytest.importorskip("ray")
    r = CliRunner().invoke(main, ["sweep", "--config", str(path), "--out", str(tmp_path / "o"), "--executor", "ray",
                                  "--address", "127.0.0.1:1"])  # fmt: skip
    assert r.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in r.output, r.output
    assert "Traceback" not in r.output
    with pytest.raises(UserError, match="HOST:PORT"):
        run_sweep(load_sweep(path, tmp_path / "p"), executor="ray", ray={"address": "nowhere"}, log=lambda m: None)
