"""Bad input: one clear line, exit code 2, no traceback, nothing earlier overwritten."""

import hashlib

import pytest
from click.testing import CliRunner

from collafuse_privacy.cli import main

from conftest import TINY


def _run(*args):
    result = CliRunner().invoke(main, list(args))
    return result


def _one_line_exit_2(result, words):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    assert words in err, err


def _sets(*overrides):
    out = []
    for o in list(TINY) + list(overrides):
        out += ["--set", o]
    return out


def _snapshot(folder):
    """Every file and its sha256 (the run's lock file, which names its last holder, aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.parametrize(
    "override, words",
    [
        ("data.colour=3", "unknown config key 'data.colour'"),
        ("train.steps=abc", "'train.steps' must be an integer"),
        ("protocol.cut_ratio=1.5", "'protocol.cut_ratio' must lie in [0.0, 1.0]"),
        ("protocol.cut_ratio=-0.01", "'protocol.cut_ratio' must lie in [0.0, 1.0]"),
        ("data.clients=2000", "data.clients=2000"),
        ("model.preset=huge", "'model.preset' must be one of"),
        ("nokeyvalue", "--set expects key=value"),
    ],
)
def test_bad_config_values(tmp_path, override, words):
    r = _run("train", "--out", str(tmp_path / "run"), *_sets(override))
    _one_line_exit_2(r, words)
    assert not (tmp_path / "run").exists()  # nothing created for a bad config


@pytest.mark.parametrize("name", ["cifar10", "image-folder"])
def test_data_root_missing(tmp_path, name):
    r = _run("train", "--out", str(tmp_path / "run"), *_sets(f"data.name={name}", "data.root=/no/such/folder"))
    _one_line_exit_2(r, "data.root does not exist: /no/such/folder")
    assert not (tmp_path / "run").exists()


def test_config_file_problems(tmp_path):
    _one_line_exit_2(_run("train", "--config", str(tmp_path / "missing.yaml")), "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  name: [digits\n  clients: 2\n")
    _one_line_exit_2(_run("train", "--config", str(bad)), "is not valid YAML")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    _one_line_exit_2(_run("train", "--config", str(lst)), "must hold a mapping")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("protocol:\n  cut: 0.5\n")
    _one_line_exit_2(_run("train", "--config", str(unknown)), "unknown config key 'protocol.cut'")


@pytest.fixture
def trained(tmp_path):
    run = tmp_path / "run"
    r = _run("train", "--out", str(run), "--quiet", *_sets())
    assert r.exit_code == 0, r.output
    return run


@pytest.mark.parametrize("victim", ["server.safetensors", "server_ema.safetensors", "client-1_ema.safetensors", "state.pt"])
@pytest.mark.parametrize("how", ["truncated", "overwritten in place"])
def test_corrupt_checkpoint(trained, victim, how):
    f = trained / "checkpoints" / "step-00000004" / victim
    data = f.read_bytes()
    if how == "truncated":
        f.write_bytes(data[: len(data) // 2])
    else:  # same size, other bytes: only the manifest's sha256 tells
        f.write_bytes(data[: len(data) // 2] + bytes(b ^ 0x5A for b in data[len(data) // 2 :]))
    before = _snapshot(trained)
    r = _run("train", "--out", str(trained), *_sets("train.steps=6"))
    _one_line_exit_2(r, f"{victim} does not match the sha256 in its manifest")
    assert "the previous checkpoint, step-00000002, is intact" in r.stderr
    assert _snapshot(trained) == before  # nothing overwritten
    if victim.endswith("_ema.safetensors"):  # sampling reads the EMA weights
        r = _run("sample", "--run", str(trained), "--n", "2")
        _one_line_exit_2(r, "is damaged")
        assert _snapshot(trained) == before


def test_resume_with_other_config_is_refused(trained):
    before = _snapshot(trained)
    r = _run("train", "--out", str(trained), *_sets("protocol.cut_ratio=0.25"))
    _one_line_exit_2(r, "holds a run with a different config (protocol.cut_ratio")
    assert _snapshot(trained) == before


def test_out_is_a_file_or_foreign_folder(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _one_line_exit_2(_run("train", "--out", str(f), *_sets()), "is not a folder")
    d = tmp_path / "other"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    _one_line_exit_2(_run("train", "--out", str(d), *_sets()), "non-empty folder")
    assert (d / "precious.txt").read_text() == "keep me"


def test_sample_bad_run(tmp_path):
    _one_line_exit_2(_run("sample", "--run", str(tmp_path / "nope")), "run directory does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(_run("sample", "--run", str(tmp_path / "empty")), "is not a run directory")


def test_train_then_sample_via_cli(trained):
    r = _run("sample", "--run", str(trained), "--n", "3")
    assert r.exit_code == 0, r.output
    assert (trained / "samples" / "grid.png").is_file()
    r = _run("train", "--out", str(trained), *_sets())  # rerun: already complete, resumes at the end
    assert r.exit_code == 0 and "resuming at round 4" in r.stderr
