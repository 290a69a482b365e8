"""The linked view's accountant (protocol/accountant.py): counts, the epsilon they give, its state,
and that a run's privacy.json is what its clients' accountants say."""

import math

import pytest
import torch

from collafuse_privacy.checkpoint import TrainingState
from collafuse_privacy.io import load_state
from collafuse_privacy.protocol import protocol_for
from collafuse_privacy.protocol.accountant import ReleaseAccountant, releases_per_image
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.run.layout import STATE
from conftest import tiny_config

SHAPE = (1, 8, 8)


@pytest.mark.parametrize("fixed", [False, True])
def test_counts_and_epsilon(fixed):
    cfg = tiny_config("protocol.kind=cut-image", "protocol.cut_ratio=0.8", f"protocol.fixed_noise={str(fixed).lower()}")
    proto = protocol_for(cfg)
    acc = ReleaseAccountant(proto, SHAPE, 5)
    assert acc.releases() == 0 and acc.get_epsilon(1e-5) == 0.0
    acc.step(torch.tensor([0, 2]))
    acc.step(torch.tensor([2, 4]))
    acc.step(torch.tensor([2]))
    assert acc.counts.tolist() == [1, 0, 3, 0, 1]
    want = 1 if fixed else 3
    assert acc.releases() == want
    mu, eps = acc.get_privacy(1e-5)
    assert (mu, eps) == proto.view_privacy(SHAPE, want, 1e-5) and math.isfinite(eps) and eps > 0
    # more releases never give a smaller epsilon (fresh noise), the same one for fixed noise
    acc.step(torch.tensor([2]))
    assert (acc.get_epsilon(1e-5) > eps) != fixed


def test_state_round_trip_and_mismatch():
    proto = protocol_for(tiny_config())
    acc = ReleaseAccountant(proto, SHAPE, 4)
    acc.step(torch.tensor([1, 3, 3]))
    other = ReleaseAccountant(proto, SHAPE, 4)
    other.load_state_dict(acc.state_dict())
    assert torch.equal(other.counts, acc.counts) and other.counts is not acc.counts
    with pytest.raises(ValueError, match="do not fit"):
        ReleaseAccountant(proto, SHAPE, 3).load_state_dict(acc.state_dict())
    assert releases_per_image([torch.tensor([1, 2]), torch.tensor([4]), torch.tensor([], dtype=torch.long)], False) == 4


def test_privacy_json_is_the_accountants(tiny_run):
    """The run's view epsilon is the largest of its clients' accountants, rebuilt from the checkpoint."""
    run = tiny_run("protocol.kind=cut-image", "protocol.cut_ratio=0.8")
    rd = RunDir(run)
    cfg = rd.config()
    state = TrainingState.from_dict(load_state(rd.ckpt_dir / rd.latest().dir / STATE))
    shape = tuple(rd.meta().shape)
    accs = []
    for counts in state.release_counts:
        a = ReleaseAccountant(protocol_for(cfg), shape, len(counts))
        a.load_state_dict({"release_counts": counts})
        accs.append(a)
    priv = rd.metrics("privacy")
    assert priv.view.releases_per_image == max(a.releases() for a in accs) > 0
    assert priv.view.epsilon == max(a.get_epsilon(priv.view.delta) for a in accs)
