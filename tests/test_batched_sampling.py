"""The clients' half of sampling taken together (``sample.batched_clients``, issue 27).

Checked against the one-by-one loop: the server's hand-over images are the same bits (its
draws are untouched), every client's samples equal the loop's within float tolerance (the same
draws from its own generator, other kernel shapes), at a middle cut, at c = 1 (each client's
own ``x_{T-1}``) and at c = 0; clients of different architectures fall back to the loop, bit
for bit; ``sample_run`` passes the config key through.
"""

import shutil

import pytest
import torch
import yaml

from collafuse_privacy.models import build_unet
from collafuse_privacy.protocol import Cut
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.sampling import CollaFusePipeline, read_samples
from collafuse_privacy.sampling.batched import batched_sampling
from collafuse_privacy.sampling.drivers import sample_run

from conftest import tiny_config
from test_pipeline import random_models


@pytest.mark.parametrize("t_c", [None, 20, 0])
def test_batched_clients_sample_what_the_loop_samples(t_c):
    cfg = tiny_config("sample.batch_size=2", "protocol.cut_ratio=0.5", "data.clients=3")
    server, clients = random_models(cfg)
    cut = Cut.from_config(cfg) if t_c is None else Cut.from_config(cfg).with_t_c(t_c)
    pipe = CollaFusePipeline.from_parts(cfg, server, clients, cut=cut)
    loop = pipe(3, 7, client_secrets=[4, 5, 6], batched_clients=False)
    together = pipe(3, 7, client_secrets=[4, 5, 6], batched_clients=True)
    assert (loop.handovers is None) == (t_c == 20)
    if loop.handovers is not None:
        assert torch.equal(together.handovers, loop.handovers)
    scale = float(loop.raw.abs().max())
    err = float((together.raw - loop.raw).abs().max())
    assert err <= 1e-5 * max(scale, 1.0), (err, scale)
    if t_c == 0:
        assert torch.equal(together.raw, loop.raw)
    else:  # a different stream per client: the samples differ from client to client
        assert not torch.allclose(together.raw[0], together.raw[1])


def test_different_architectures_fall_back_to_the_loop():
    cfg = tiny_config("sample.batch_size=2")
    server, clients = random_models(cfg)
    torch.manual_seed(1)
    clients[1] = build_unet("small", cfg.data.image_size, 1).eval()
    pipe = CollaFusePipeline.from_parts(cfg, server, clients)
    assert not batched_sampling(True, torch.device("cpu"), clients)
    assert batched_sampling(None, torch.device("cpu"), clients[:1] * 2) is False  # null: CUDA only
    a, b = pipe(3, 7, batched_clients=False), pipe(3, 7, batched_clients=True)
    assert torch.equal(a.raw, b.raw) and torch.equal(a.handovers, b.handovers)


def test_sample_run_reads_the_key(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run(), run)
    sample_run(run, n=3, device="cpu")
    loop, _ = read_samples(run)
    rd = RunDir(run)
    cfg = rd.config()
    d = yaml.safe_load((run / "config.yaml").read_text())
    assert d["sample"]["batched_clients"] is None, "the resolved config names sample.batched_clients"
    d["sample"]["batched_clients"] = True  # a mutable key: the same run, sampled with the clients together
    (run / "config.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert RunDir(run).config().sample.batched_clients is True and cfg.sample.batched_clients is None
    sample_run(run, n=3, device="cpu")
    together, _ = read_samples(run)
    assert all(torch.allclose(together[k], loop[k], atol=1e-5) for k in range(len(loop)))
