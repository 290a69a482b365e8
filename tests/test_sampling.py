"""Collaborative sampling math, checked with a Bayes-optimal denoiser.

When all data is one image x0* (a point mass), the optimal noise predictors are
known in closed form, so the sampling loops can be checked without training:
the server must hand over h ~ q(x_{t_c-1} | x0*) = N(sqrt(abar) x0*, (1-abar) I)
and the client must end exactly at x0*.
"""

from types import SimpleNamespace

import pytest
import torch

from collafuse_privacy.protocol import protocol_for
from collafuse_privacy.sampling.sampler import Sampler
from collafuse_privacy.sampling import client_denoise

from conftest import tiny_config


class PointMassOracle(torch.nn.Module):
    """E[noise | x_t] when the data is the single image ``x0``.

    ``tail=True``: the cut-image server's target eps2 (its data are hand-over images
    h ~ N(sqrt(abar_c) x0, (1-abar_c) I)): E[eps2 | x_t] = sqrt(1-abar'_t)
    (x_t - sqrt(abar_t) x0) / (1 - abar_t), with abar'_t = abar_t / abar_c.
    """

    def __init__(self, x0, abar, abar_c=None):
        super().__init__()
        self.x0, self.abar, self.abar_c = x0, abar, abar_c

    def forward(self, x, t, class_labels=None):
        a = self.abar[t].float().view(-1, 1, 1, 1)
        if self.abar_c is None:
            eps = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        else:
            eps = (1 - a / self.abar_c).sqrt() * (x - a.sqrt() * self.x0) / (1 - a)
        return SimpleNamespace(sample=eps)


@pytest.mark.parametrize("kind", ["cut-image", "shared-noise"])
@pytest.mark.parametrize("T", [50, 200])
def test_server_hands_over_the_right_marginal_and_client_recovers_x0(kind, T):
    cfg = tiny_config(f"diffusion.timesteps={T}", "protocol.cut_ratio=0.4", f"protocol.kind={kind}")
    proto = protocol_for(cfg)
    abar, ac = proto.cut.abar, proto.cut.abar_handover
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 4, 4, generator=g) * 2 - 1
    n = 4000
    x = torch.randn(n, 1, 4, 4, generator=g)
    server = PointMassOracle(x0, abar, None if proto.sends_noise else ac)
    sampler = Sampler(proto.cut, "none")
    h = proto.server_denoise(server, x, None, g, sampler)
    z_mean = (h.mean(0) - ac**0.5 * x0) / (1 - ac) ** 0.5
    assert z_mean.abs().max() < 5 / n**0.5
    assert abs(h.var(0).mean() / (1 - ac) - 1) < 0.05
    out = client_denoise(PointMassOracle(x0, abar), sampler, h, g)
    assert (out - x0).abs().max() < 1e-5


def test_the_guard_refuses_divergence_not_a_few_stray_pixels():
    """Shares decide: a good unclipped chain overshoots [-1, 1] a little at the background and
    leaves a few stray hand-over pixels; a diverged one puts many pixels far outside."""
    from collafuse_privacy.sampling import SampleStats

    ok = SampleStats(max_abs=[1.05, 9.0], outside=[0.7, 0.8], non_finite=0, tolerance=1.13, beyond=[0.0, 0.001],
                     handover_max_abs=9.45, handover_range=3.13, handover_beyond=1e-4)
    assert ok.problem() is None
    assert "pixels lie beyond" in SampleStats(max_abs=[30.0], outside=[0.9], non_finite=0, tolerance=1.13,
                                              beyond=[0.05]).problem()
    assert "hand-over pixels lie beyond" in SampleStats(max_abs=[1.0], outside=[0.0], non_finite=0, tolerance=1.13,
                                                        beyond=[0.0], handover_max_abs=50.0, handover_range=3.13,
                                                        handover_beyond=0.2).problem()
    assert "non-finite" in SampleStats(max_abs=[1.0], outside=[0.0], non_finite=1, tolerance=1.13, beyond=[0.0]).problem()
