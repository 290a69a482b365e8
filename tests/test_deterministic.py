"""``train.deterministic`` and the random streams' devices (issue 27), on the CPU.

Checked: the option switches torch's deterministic algorithms on inside a party's step and
sampling and restores the caller's setting after; on the CPU, whose kernels are deterministic
already, a run with it is the same bits as a run without, batched clients and DP-SGD included,
and resumes bit-identically; a checkpoint's generator state that does not fit the generator
(another device type's) is refused in one line. The CUDA side is in ``tests/test_cuda.py``.
"""

import os

import pytest
import torch

import collafuse_privacy.party as party_module
import collafuse_privacy.training.batched as batched_module
from collafuse_privacy.errors import UserError
from collafuse_privacy.rng import deterministic_algorithms, generator, randint, randn, restore
from collafuse_privacy.training import train

from test_training import _assert_same, _final_state, _killed_then_resumed
from conftest import tiny_config

OVER = ["train.steps=6", "train.checkpoint_every=3", "record.shard_size=10"]


def test_the_context_switches_the_flag_on_and_restores_it(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(False):
        assert not torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)  # a caller's own setting survives the block
    try:
        with deterministic_algorithms(True):
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("extra", [(), ("train.batched_clients=true",), ("defense.client_dp.enabled=true",
                                                                         "defense.client_dp.noise_multiplier=1.0")])
def test_a_deterministic_run_is_the_same_bits_on_the_cpu(tmp_path, extra, monkeypatch):
    seen = []

    def recording(real):
        def p_losses(*a, **kw):  # the flag is on where the parties' forward (and backward) passes run
            seen.append(torch.are_deterministic_algorithms_enabled())
            return real(*a, **kw)
        return p_losses

    train(tiny_config(*OVER, *extra), tmp_path / "plain", device="cpu", quiet=True)
    for module in (party_module, batched_module):
        monkeypatch.setattr(module, "p_losses", recording(module.p_losses))
    train(tiny_config(*OVER, *extra, "train.deterministic=true"), tmp_path / "det", device="cpu", quiet=True)
    monkeypatch.undo()
    assert seen and all(seen), "every party step of the deterministic run ran with the flag on"
    assert not torch.are_deterministic_algorithms_enabled()
    _assert_same(_final_state(tmp_path / "plain"), _final_state(tmp_path / "det"))


def test_a_deterministic_run_resumes_bitwise(tmp_path):
    cfg = tiny_config(*OVER, "train.steps=7", "train.deterministic=true", "train.batched_clients=true")
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)
    _killed_then_resumed(cfg, tmp_path / "resumed")
    _assert_same(_final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed"))


def test_draws_are_made_on_the_generators_device_and_a_foreign_state_is_refused():
    g = generator(3, 4)
    assert randn((2, 3), g).device == g.device and randint(5, 4, g).device == g.device
    a = generator(3, 4)
    assert torch.equal(randn((2, 3), a), torch.randn((2, 3), generator=generator(3, 4)))  # the CPU stream as before
    cuda_like = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) generator's state: seed and offset
    with pytest.raises(UserError, match="resumes on the device type it was trained on"):
        restore(generator(1), cuda_like, "client 0")
    state = g.get_state()
    restore(a, state, "client 0")
    assert torch.equal(a.get_state(), state)
