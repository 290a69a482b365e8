"""train.precision: bf16 / fp16 autocast on the CPU trains, leaves the view and its accounting as in
fp32, and resumes bit-identically; auto is fp32 on the CPU."""

import json
import math

import pytest
import torch

from collafuse_privacy.config import load_config
from collafuse_privacy.errors import UserError
from collafuse_privacy.party import resolve_precision
from collafuse_privacy.training import train

from test_training import _assert_same, _final_state, _killed_then_resumed
from conftest import tiny_config

OVER = ["train.steps=6", "train.checkpoint_every=3", "record.shard_size=10"]


def test_auto_is_fp32_on_the_cpu_and_bf16_on_cuda():
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_precision("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(UserError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_leaves_the_view_and_accounting_as_in_fp32(tmp_path, precision):
    train(tiny_config(*OVER, "train.precision=fp32"), tmp_path / "fp32", device="cpu", quiet=True)
    train(tiny_config(*OVER, f"train.precision={precision}"), tmp_path / precision, device="cpu", quiet=True)
    w32, view32, truth32, log32 = _final_state(tmp_path / "fp32")
    w16, view16, truth16, log16 = _final_state(tmp_path / precision)
    # the view (the rows, their timesteps and hand-over levels) does not depend on the model's precision
    assert view32.keys() == view16.keys() and truth32.keys() == truth16.keys()
    for a, b in [(view32, view16), (truth32, truth16)]:
        for name in a:
            for key in a[name]:
                assert a[name][key].dtype == b[name][key].dtype
                assert torch.equal(a[name][key], b[name][key]), f"{name}:{key}"
    losses = [x for row in log16 for x in [row["server_loss"], *row["client_loss"]] if x is not None]
    assert losses and all(math.isfinite(x) for x in losses)
    # ... while the model did run in the lower precision: the losses are close, not equal
    l32 = [x for row in log32 for x in [row["server_loss"], *row["client_loss"]] if x is not None]
    assert l32 != losses and max(abs(a - b) for a, b in zip(l32, losses)) < 0.1
    # weights are kept in fp32
    assert all(v.dtype == torch.float32 for f in w16.values() for k, v in f.items() if v.is_floating_point())
    p32 = json.loads((tmp_path / "fp32" / "metrics" / "privacy.json").read_text())
    p16 = json.loads((tmp_path / precision / "metrics" / "privacy.json").read_text())
    assert p32 == p16


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_resumes_bitwise(tmp_path, precision):
    cfg = tiny_config(*OVER, "train.steps=7", f"train.precision={precision}")
    train(cfg, tmp_path / "straight", device="cpu", quiet=True)
    _killed_then_resumed(cfg, tmp_path / "resumed")
    _assert_same(_final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed"))
