"""The GPU path on a GPU (skipped without CUDA; benchmarks/gpu_check.sh runs them where there is one)."""

import shutil

import pytest
import torch
import yaml

from collafuse_privacy.sampling import read_samples
from collafuse_privacy.sampling.drivers import sample_run
from collafuse_privacy.training import train

from test_training import Interrupt, _assert_same, _final_state
from conftest import tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OVER = ["train.steps=6", "train.checkpoint_every=3", "record.shard_size=10", "data.clients=3"]


def test_a_cuda_run_trains_in_bf16_batched_with_its_draws_on_the_device(tmp_path, monkeypatch):
    """device auto on CUDA: bf16 autocast, batched clients, every t / eps draw made on the GPU from
    CUDA generators (no host-to-device copy of noise); a second run records the same view."""
    made = []
    real = torch.randn

    def randn(*a, **kw):
        g = kw.get("generator")
        if g is not None:
            made.append((g.device.type, str(kw.get("device"))))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "randn", randn)
    cuda = train(tiny_config(*OVER, "device=cuda"), tmp_path / "a", device="cuda", quiet=True)
    monkeypatch.undo()
    assert cuda["steps"] == 6
    noise = [m for m in made if m[0] == "cuda"]
    assert noise and all(d.startswith("cuda") for _, d in noise), made[:5]
    train(tiny_config(*OVER, "device=cuda"), tmp_path / "b", device="cuda", quiet=True)
    (_, va, _, la), (_, vb, _, lb) = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert all(torch.equal(va[n][k], vb[n][k]) for n in va for k in va[n])
    assert [r["sent"] for r in la] == [r["sent"] for r in lb]


@pytest.mark.parametrize("deterministic", [True, False])
def test_cuda_resume(tmp_path, deterministic):
    """train.deterministic: bit-identical; without: the view exact, the weights within float noise."""
    cfg = tiny_config(*OVER, "train.steps=7", "device=cuda", "train.precision=fp32",
                      f"train.deterministic={str(deterministic).lower()}")  # fmt: skip
    train(cfg, tmp_path / "straight", device="cuda", quiet=True)

    def stop(step):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "resumed", device="cuda", quiet=True, on_round=stop)
    train(cfg, tmp_path / "resumed", device="cuda", quiet=True)
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    if deterministic:
        _assert_same(a, b)
        return
    assert all(torch.equal(a[1][n][k], b[1][n][k]) for n in a[1] for k in a[1][n])
    for name in a[0]:
        for key in a[0][name]:
            assert torch.allclose(a[0][name][key], b[0][name][key], rtol=1e-4, atol=1e-6), f"{name}:{key}"


def test_cuda_sampling_batches_the_clients_and_equals_the_loop(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(*OVER, "device=cuda"), run, device="cuda", quiet=True)
    sample_run(run, n=5, device="cuda")  # sample.batched_clients null: batched on CUDA
    together, _ = read_samples(run)
    loop_run = tmp_path / "loop"
    shutil.copytree(run, loop_run)
    d = yaml.safe_load((loop_run / "config.yaml").read_text())
    d["sample"]["batched_clients"] = False
    (loop_run / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    sample_run(loop_run, n=5, device="cuda")
    loop, _ = read_samples(loop_run)
    assert all(torch.allclose(together[k], loop[k], atol=1e-4) for k in range(len(loop)))
