"""Sweeps: a grid of ordinary runs; resumable after a kill; a failing cell does not stop the rest."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from collafuse_privacy.cli import main
from collafuse_privacy.errors import UserError
from collafuse_privacy.eval.report import collect
from collafuse_privacy.orchestration import load_sweep, run_sweep

from conftest import TINY

STAGES = {"train": {}, "sample": {}, "privacy": {}, "reconstruction": {"methods": ["rescale"]},
          "membership": {"methods": ["view-lrt"]}}


def sweep_file(tmp_path: Path, steps: int = 16, include=None, stages=STAGES) -> Path:
    base = {}
    for item in TINY + [f"train.steps={steps}", "train.checkpoint_every=4", "record.dtype=float32"]:
        key, _, value = item.partition("=")
        node = base
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    raw = {"name": "tiny", "base": base, "grid": {"protocol.cut_ratio": [0.3, 0.7], "protocol.fixed_noise": [False, True]},
           "stages": stages}
    if include:
        raw["include"] = include
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def table(out: Path) -> list[dict]:
    return sorted((r.to_row() for r in collect([out])), key=lambda r: r["label"])


def test_sweep_killed_and_resumed_equals_uninterrupted(tmp_path):
    path = sweep_file(tmp_path)
    full = tmp_path / "full"
    run_sweep(load_sweep(path, full), log=lambda m: None, quiet=True)

    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "collafuse_privacy", "sweep", "--config", str(path), "--out", str(cut),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    # Kill it once the second cell has a checkpoint: one cell done, one mid-training.
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(cut.glob("cells/*/checkpoints/latest.json"))
        if len(ckpts) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = [json.loads(f.read_text()).get("status") for f in cut.glob("cells/*/cell.json")]
    assert states.count("done") < 4

    index = run_sweep(load_sweep(path, cut), log=lambda m: None, quiet=True)
    assert [c.status for c in index.cells] == ["done"] * 4
    a, b = table(full), table(cut)
    assert len(a) == 4 and a == b
    # the table holds real numbers from every stage
    assert all(r["mia[server].view-lrt.auc"] is not None and r["recon.rescale.ssim"] is not None for r in a)


def test_failed_cell_is_recorded_and_others_finish(tmp_path):
    bad = {"data.name": "image-folder", "data.root": str(tmp_path / "no-such-folder")}
    path = sweep_file(tmp_path, steps=4, include=[bad], stages={"train": {}, "privacy": {}})
    out = tmp_path / "out"
    index = run_sweep(load_sweep(path, out), log=lambda m: None, quiet=True)
    status = {c.label: c for c in index.cells}
    assert len(status) == 5
    failed = [c for c in status.values() if c.status == "failed"]
    assert len(failed) == 1 and "no-such-folder" in failed[0].error
    assert sum(c.status == "done" for c in status.values()) == 4
    # rerunning skips the finished cells (their stage timings do not change) and retries the failed one
    before = {c.id: c.seconds for c in index.cells if c.status == "done"}
    index2 = run_sweep(load_sweep(path, out), log=lambda m: None, quiet=True)
    assert {c.id: c.seconds for c in index2.cells if c.status == "done"} == before
    # once the data exist, the failed cell recovers in the same folder (its markers do not block it)
    from PIL import Image
    import numpy as np

    (tmp_path / "no-such-folder").mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, dtype=np.uint8)).save(tmp_path / "no-such-folder" / f"{i}.png")
    index3 = run_sweep(load_sweep(path, out), log=lambda m: None, quiet=True)
    assert [c.status for c in index3.cells] == ["done"] * 5


def test_changed_stage_options_rerun_that_stage(tmp_path):
    stages = {"train": {}, "reconstruction": {"methods": ["rescale"]}}
    path = sweep_file(tmp_path, steps=4, stages=stages)
    out = tmp_path / "out"
    run_sweep(load_sweep(path, out), log=lambda m: None, quiet=True)
    cell = next((out / "cells").iterdir())
    assert set(json.loads((cell / "metrics" / "reconstruction.json").read_text())["methods"]) == {"rescale"}
    path = sweep_file(tmp_path, steps=4, stages={"train": {}, "reconstruction": {"methods": ["rescale", "exact"]}})
    run_sweep(load_sweep(path, out), log=lambda m: None, quiet=True)
    assert set(json.loads((cell / "metrics" / "reconstruction.json").read_text())["methods"]) == {"rescale", "exact"}


def test_sweep_file_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("grid: {protocol.cut_ratio: [0.2, 1.5]}\n")
    with pytest.raises(UserError, match="cut_ratio"):
        load_sweep(p, tmp_path / "o")
    p.write_text("grid: {protocol.cut_ratio: 0.2}\n")
    with pytest.raises(UserError, match="non-empty list"):
        load_sweep(p, tmp_path / "o")
    p.write_text("grid: {protocol.cut_ratio: [0.2]}\nstages: {train: {}, attack: {}}\n")
    with pytest.raises(UserError, match="unknown stage 'attack'"):
        load_sweep(p, tmp_path / "o")
    p.write_text("gird: {}\n")
    r = CliRunner().invoke(main, ["sweep", "--config", str(p), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown key 'gird'" in r.output
    assert not (tmp_path / "o").exists()


def test_cells_keyed_by_config_hash(tmp_path):
    s = load_sweep(sweep_file(tmp_path), tmp_path / "o")
    assert len({c.id for c in s.cells}) == 4
    # train.steps is not part of a run's identity (config.config_hash): more rounds extend the same cells
    s2 = load_sweep(sweep_file(tmp_path, steps=17), tmp_path / "o")
    assert {c.id for c in s.cells} == {c.id for c in s2.cells}
    # any other change makes new cells
    p = sweep_file(tmp_path)
    p.write_text(p.read_text().replace("shard_size: 16", "shard_size: 15"))
    s3 = load_sweep(p, tmp_path / "o")
    assert not {c.id for c in s.cells} & {c.id for c in s3.cells}


def test_more_steps_extend_the_cells_and_rerun_later_stages(tmp_path):
    stages = {"train": {}, "privacy": {}}
    out = tmp_path / "out"
    run_sweep(load_sweep(sweep_file(tmp_path, steps=4, stages=stages), out), log=lambda m: None, quiet=True)
    run_sweep(load_sweep(sweep_file(tmp_path, steps=6, stages=stages), out), log=lambda m: None, quiet=True)
    for cell in (out / "cells").iterdir():
        assert json.loads((cell / "metrics" / "privacy.json").read_text())["step"] == 6
        assert len((cell / "metrics" / "train.jsonl").read_text().splitlines()) == 6


def test_per_cell_stages_and_the_audit_on_request(tmp_path):
    """An include entry's ``stages`` apply to that cell only; one that only adds stages to a grid cell
    merges into it; the audit runs only where asked for; an audit-only sweep trains no base cells."""
    inc = [{"protocol.cut_ratio": 0.3, "protocol.fixed_noise": True, "stages": {"audit": {"canaries": 100}}},
           {"protocol.cut_ratio": 0.5, "stages": {"audit": {"canaries": 200, "target": "server"}}}]  # fmt: skip
    s = load_sweep(sweep_file(tmp_path, include=inc), tmp_path / "o")
    assert len(s.cells) == 5  # 4 grid cells, the first include merged into one of them
    audited = {c.overrides.get("protocol.cut_ratio"): s.cell_stages(c) for c in s.cells if "audit" in s.cell_stages(c)}
    assert set(audited) == {0.3, 0.5}
    assert audited[0.3]["audit"] == {"canaries": 100} and "membership" in audited[0.3]
    assert list(audited[0.5])[-1] == "audit"  # registry order: the audit last
    assert sum("audit" in s.cell_stages(c) for c in s.cells) == 2
    p = tmp_path / "a.yaml"
    p.write_text("include: [{stages: {audit: {canaries: 50}}}]\nstages: {}\n")
    s2 = load_sweep(p, tmp_path / "o2")
    assert [list(s2.cell_stages(c)) for c in s2.cells] == [["audit"]]
    p.write_text("include: [{train.steps: 7, stages: {audit: {canaries: 50}}}]\nstages: {}\n")
    (cell,) = load_sweep(p, tmp_path / "o4").cells  # an include refining the base cell: its steps win
    assert cell.config["train"]["steps"] == 7
    p.write_text("include: [{stages: {audit: {canarys: 50}}}]\n")
    with pytest.raises(UserError, match="unknown option 'canarys'"):
        load_sweep(p, tmp_path / "o3")
