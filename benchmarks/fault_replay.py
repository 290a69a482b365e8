"""Replay the faults of issue 13 against a tiny run, through the command line, and print per
case the exit code, whether a traceback appeared and the first line of stderr. Every case must
end with exit 0 (it worked) or 2 (one clear line), never 1 with a traceback.

    .venv/bin/python benchmarks/fault_replay.py [--workdir /tmp/faults]

Exits 1 if any case ends otherwise. Takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TINY = ["data.name=digits", "data.image_size=8", "data.clients=2", "diffusion.timesteps=20", "model.preset=micro",
        "train.steps=4", "train.batch_size=8", "train.checkpoint_every=2", "record.shard_size=16", "sample.n=4",
        "device=cpu", "secrets.derive_from_seed=true"]  # fmt: skip
CLI = [sys.executable, "-m", "collafuse_privacy", "--threads", "1"]
ROWS: list[tuple[str, int, bool, str]] = []


def sets(*extra) -> list[str]:
    out = []
    for o in TINY + list(extra):
        out += ["--set", o]
    return out


def run(name: str, args: list[str], expect=(0, 2), env=None, timeout=600) -> subprocess.CompletedProcess:
    p = subprocess.run(CLI + args, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    record(name, p.returncode, p.stderr, expect)
    return p


def record(name: str, code: int, stderr: str, expect=(0, 2)) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    first = errors[0] if errors else (stderr.strip().splitlines() or [""])[-1]
    ok = code in expect and "Traceback" not in stderr and (code != 2 or len(errors) == 1)
    ROWS.append((name, code, "Traceback" in stderr, first[:150] if ok else "UNEXPECTED: " + stderr[-400:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/collafuse-faults")
    args = ap.parse_args()
    w = Path(args.workdir)
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    base = w / "base"
    p = subprocess.run(CLI + ["train", "--quiet", "--out", str(base)] + sets(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    def fresh(name: str) -> Path:
        d = w / name
        shutil.copytree(base, d, ignore=shutil.ignore_patterns(".lock"))
        return d

    run("train.lr=.inf", ["train", "--out", str(w / "a")] + sets("train.lr=.inf"))
    run("protocol.cut_ratio=.nan", ["train", "--out", str(w / "b")] + sets("protocol.cut_ratio=.nan"))
    run("a diverging lr (1e30)", ["train", "--quiet", "--out", str(w / "c")] + sets("train.lr=1e30", "train.steps=6"))
    d = fresh("overwritten")
    f = d / "checkpoints" / "step-00000004" / "server_ema.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:100] + bytes(b ^ 1 for b in data[100:200]) + data[200:])  # same size, other bytes
    run("checkpoint overwritten in place: resume", ["train", "--out", str(d)] + sets("train.steps=6"))
    run("checkpoint overwritten in place: sample", ["sample", "--run", str(d), "--n", "2"])
    d = fresh("nolatest")
    (d / "checkpoints" / "latest.json").unlink()
    run("latest.json missing: resume", ["train", "--quiet", "--out", str(d)] + sets("train.steps=6"))
    d = w / "smallT"
    run("T = 20: train", ["train", "--quiet", "--out", str(d)] + sets("train.steps=30", "protocol.cut_ratio=0.3"))
    run("T = 20: sample --n 512", ["sample", "--run", str(d), "--n", "512"])
    p = run("T = 20: evaluate --no-ends", ["evaluate", "--run", str(d), "--no-ends", "--n", "512"],
            env={"COLLAFUSE_CACHE": str(w / "cache")})  # fmt: skip
    print(p.stdout.splitlines()[2] if p.returncode == 0 else "", file=sys.stderr)
    run("diffusion.timesteps=5", ["train", "--out", str(w / "t5")] + sets("diffusion.timesteps=5"))

    # two writers on one run
    d = w / "twice"
    cmd = CLI + ["train", "--quiet", "--out", str(d)] + sets("train.steps=30", "train.checkpoint_every=10")
    a = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    b = subprocess.run(cmd, capture_output=True, text=True)
    _, err_a = a.communicate()
    record("two identical train commands: first", a.returncode, err_a)
    record("two identical train commands: second", b.returncode, b.stderr)
    rows = len((d / "metrics" / "train.jsonl").read_text().splitlines())
    ROWS.append((f"  -> train.jsonl rows: {rows} (30 expected)", 0 if rows == 30 else 1, False, ""))

    # OS errors
    d = fresh("notafolder")
    (d / "figures").write_text("a file where a folder belongs")
    run("attack into a run whose figures/ is a file", ["attack", "--run", str(d), "--type", "membership"])
    (w / "afile").write_text("x")
    run("report --out pointing at a file", ["report", str(base), "--out", str(w / "afile"), "--no-screenshot"])
    full = w / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(full)],
                             capture_output=True).returncode == 0  # fmt: skip
    if mounted:
        try:
            run("a full disk during training", ["train", "--quiet", "--out", str(full / "r")] + sets("train.steps=8"))
        finally:
            subprocess.run(["umount", str(full)])
    else:
        ROWS.append(("a full disk during training: not replayable here (no tmpfs mount)", 0, False, ""))

    # interrupted outputs
    d = fresh("killed")
    run("sample --n 3", ["sample", "--run", str(d), "--n", "3"])
    # killed while writing: `sample` removes its manifest first and writes it back last
    (d / "samples" / "manifest.json").unlink()
    (d / "samples" / "client-0.safetensors").write_bytes(b"half of a newer file")
    (d / "samples" / ".client-1.safetensors.x1y2.tmp").write_bytes(b"half")
    p = run("attack reconstruction after a killed sample", ["attack", "--run", str(d), "--type", "reconstruction",
                                                           "--method", "inference", "--option", "inference.steps=5"])
    ROWS.append(("  -> inference: " + next((ln.strip() for ln in p.stdout.splitlines() if "inference" in ln
                                             and "not applicable" in ln), "scored (unexpected)")[:110], 0, False, ""))
    p = run("evaluate after a killed sample (samples again)", ["evaluate", "--run", str(d), "--no-ends", "--n", "4"],
            env={"COLLAFUSE_CACHE": str(w / "cache")})  # fmt: skip
    ROWS.append((f"  -> stale temporaries left: {len(list(d.rglob('.*.tmp')))}", 0, False, ""))
    k = subprocess.Popen(CLI + ["attack", "--run", str(d), "--type", "membership"], stderr=subprocess.DEVNULL)
    time.sleep(6)
    k.send_signal(signal.SIGKILL)
    k.wait()
    p = run("report after a killed attack", ["report", str(d), "--no-screenshot"])

    # resources, data, reports
    # refused by the memory estimate on this machine (about 62 GB: 801 models and the server's step over 800
    # clients' hand-over images); one round only where a machine has the memory
    run("data.clients=800 (the default config)", ["train", "--quiet", "--out", str(w / "huge"), "--set", "data.clients=800",
        "--set", "device=cpu", "--set", "train.steps=1"], timeout=1200)  # fmt: skip
    try:
        import numpy as np
        from PIL import Image

        ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
        for kind in ("png16", "tiff-float"):
            folder = w / kind
            (folder / "a").mkdir(parents=True)
            (folder / "b").mkdir(parents=True)
            for i in range(12):
                path = folder / ("ab"[i % 2]) / f"{i}"
                if kind == "png16":
                    Image.fromarray((ramp * 65535).astype(np.uint16)).save(f"{path}.png")
                else:
                    Image.fromarray(ramp, mode="F").save(f"{path}.tif")
            run(f"image-folder of {kind}", ["train", "--quiet", "--out", str(w / f"{kind}-run")]
                + sets("data.name=image-folder", f"data.root={folder}", "data.channels=1", "train.steps=2"))
    except ImportError:
        pass
    d = fresh("badreport")
    (d / "metrics" / "membership.json").write_text("[]")
    run("report with membership.json = []", ["report", str(d), "--no-screenshot"])
    (d / "metrics" / "membership.json").write_text(json.dumps({"schema": 1, "targets": {"server": {"t_c": "x"}}}))
    run("report with membership.json of the wrong shape", ["report", str(d), "--no-screenshot"])
    d = fresh("twicereport")
    p = run("report DIR DIR (the same folder twice)", ["report", str(d), str(d), "--no-screenshot"])

    width = max(len(r[0]) for r in ROWS)
    print(f"{'case':{width}}  exit  traceback  first line of stderr")
    bad = 0
    for name, code, tb, first in ROWS:
        print(f"{name:{width}}  {code:>4}  {'yes' if tb else 'no':>9}  {first}")
        bad += code not in (0, 2) or tb or first.startswith("UNEXPECTED")
    print(f"{len(ROWS)} cases, {bad} not ending in exit 0 or a one-line exit 2")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
