"""The GPU path on a GPU (skipped without CUDA; benchmarks/gpu_check.sh runs them where there is one)."""

import pytest
import torch

from collafuse_privacy.training import train

from test_training import Interrupt, _final_state
from conftest import tiny_config

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

OVER = ["train.steps=6", "train.checkpoint_every=3", "record.shard_size=10", "data.clients=3"]


def test_a_cuda_run_trains_in_bf16_batched_and_sends_what_the_cpu_run_sends(tmp_path):
    """device auto on CUDA: bf16 autocast and batched clients; the draws come from the same
    checkpointed CPU generators, so the view holds the same rows as the CPU run's (float noise apart)."""
    cuda = train(tiny_config(*OVER, "device=cuda"), tmp_path / "cuda", device="cuda", quiet=True)
    train(tiny_config(*OVER), tmp_path / "cpu", device="cpu", quiet=True)
    assert cuda["steps"] == 6
    _, view_gpu, _, log_gpu = _final_state(tmp_path / "cuda")
    _, view_cpu, _, log_cpu = _final_state(tmp_path / "cpu")
    assert view_gpu.keys() == view_cpu.keys()
    for name in view_cpu:
        for key in view_cpu[name]:
            assert torch.allclose(view_gpu[name][key].float(), view_cpu[name][key].float(), atol=1e-5), f"{name}:{key}"
    assert [r["sent"] for r in log_gpu] == [r["sent"] for r in log_cpu]


def test_cuda_resume_is_bit_identical_within_a_run(tmp_path):
    cfg = tiny_config(*OVER, "train.steps=7", "device=cuda", "train.precision=fp32", "train.batched_clients=false")
    train(cfg, tmp_path / "straight", device="cuda", quiet=True)

    def stop(step):
        if step == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "resumed", device="cuda", quiet=True, on_round=stop)
    train(cfg, tmp_path / "resumed", device="cuda", quiet=True)
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    # the view and the log's counts are exact; the weights within float noise of nondeterministic kernels
    assert all(torch.equal(a[1][n][k], b[1][n][k]) for n in a[1] for k in a[1][n])
    for name in a[0]:
        for key in a[0][name]:
            assert torch.allclose(a[0][name][key], b[0][name][key], rtol=1e-4, atol=1e-6), f"{name}:{key}"
