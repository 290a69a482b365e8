"""CollaFusePipeline: one diffusers pipeline for the server, the clients and the cut.

Checked: ``save_pretrained`` / ``from_pretrained`` reproduces ``collafuse-privacy sample`` bit
for bit; the pipeline draws exactly what the sampling path of commit 99ae7dd drew (its loops are
kept below as the reference; the tensors of 99ae7dd itself were compared once for seven
configurations when the pipeline replaced them); the halves Flower runs apart equal the whole;
c = 0 and c = 1.
"""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from diffusers import DDPMScheduler, UNet2DModel

from collafuse_privacy.cli import main
from collafuse_privacy.errors import UserError
from collafuse_privacy.io import load_tensors
from collafuse_privacy.models import build_unet
from collafuse_privacy.protocol import Cut, protocol_for
from collafuse_privacy.rng import generator
from collafuse_privacy.run.directory import RunDir
from collafuse_privacy.sampling import (CollaFusePipeline, Sampler, client_finish, client_sample_generator,
                                        read_samples, run_client_secrets, server_handovers)

from conftest import tiny_config


def reference_sample(server, clients, cfg, n, seed, batch_size, secrets=None, cut=None):
    """The sampling path of commit 99ae7dd (sampling.server_handovers, then client_finish per client)."""
    proto = protocol_for(cfg, cut)
    cut, sampler = proto.cut, Sampler.from_config(cfg, proto.cut)
    K, shape = len(clients), (clients[0].config.in_channels, cfg.data.image_size, cfg.data.image_size)
    chunks = [(a, min(n, a + batch_size)) for a in range(0, n, batch_size)]
    handovers = None
    if not cut.sends_nothing:
        g, handovers = generator(seed, 11), torch.empty(K, n, *shape)
        for k in range(K):
            for a, b in chunks:
                x = torch.randn((b - a, *shape), generator=g)
                labels = None
                if cfg.model.server_conditioning == "client":
                    labels = torch.full((b - a,), k, dtype=torch.long)
                elif cfg.model.server_conditioning == "labels":
                    labels = torch.randint(0, server.config.num_class_embeds, (b - a,), generator=g)
                handovers[k, a:b] = proto.server_denoise(server, x, labels, g, sampler)
    out = torch.empty(K, n, *shape)
    for k, model in enumerate(clients):
        g = generator(secrets[k], 12, seed) if secrets is not None else generator(seed, 12, k)
        for a, b in chunks:
            h = handovers[k, a:b] if handovers is not None else torch.randn((b - a, *shape), generator=g)
            out[k, a:b] = h if cut.sends_clean else sampler.run(lambda x, t: model(x, t).sample, h, cut.t_c - 1, 0, g)
    return out, handovers


def random_models(cfg, seed=0):
    """A server and ``data.clients`` client UNets with random weights (what is checked here is how the
    pipeline draws and routes, not what the models learnt)."""
    torch.manual_seed(seed)
    n_cls = {"client": cfg.data.clients, "labels": 10}.get(cfg.model.server_conditioning)
    server = build_unet(cfg.model.preset, cfg.data.image_size, 1, n_cls).eval()
    return server, [build_unet(cfg.model.preset, cfg.data.image_size, 1).eval() for _ in range(cfg.data.clients)]


def assert_same(out, ref):
    raw, handovers = ref
    assert torch.equal(out.raw, raw) and torch.equal(out.images, raw.clamp(-1, 1))
    assert (out.handovers is None) == (handovers is None)
    assert handovers is None or torch.equal(out.handovers, handovers)


def test_from_pretrained_reproduces_the_sample_command_bit_for_bit(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run(), run)
    exported = tmp_path / "pipeline"
    r = CliRunner().invoke(main, ["--threads", str(torch.get_num_threads()), "sample", "--run", str(run), "--n", "3",
                                  "--seed", "5", "--device", "cpu", "--save-pretrained", str(exported)])  # fmt: skip
    assert r.exit_code == 0, r.output
    samples, manifest = read_samples(run)
    index = json.loads((exported / "model_index.json").read_text())  # diffusers' layout: a folder per component
    assert index["_class_name"] == "CollaFusePipeline" and index["client_1"] == ["diffusers", "UNet2DModel"]
    assert (exported / "client_1" / "diffusion_pytorch_model.safetensors").is_file()
    assert (exported / "scheduler" / "scheduler_config.json").is_file()
    assert index["step"] == manifest.step and index["t_c"] == RunDir(run).config().t_c

    pipe = CollaFusePipeline.from_pretrained(exported)
    out = pipe(3, 5, client_secrets=run_client_secrets(run, RunDir(run).config()))
    assert all(torch.equal(out.images[k], samples[k]) for k in range(2))
    h = load_tensors(run / "server_view" / "handover" / "sample.safetensors")["h"]
    assert torch.equal(out.handovers.reshape(h.shape), h)
    # any diffusers code loads a party's model alone
    assert isinstance(UNet2DModel.from_pretrained(exported / "client_0", low_cpu_mem_usage=False), UNet2DModel)


@pytest.mark.parametrize("overrides", [
    ("sample.batch_size=2", "sample.clip=low-noise"),  # batches: the streams' order
    ("protocol.kind=shared-noise", "model.server_conditioning=client", "protocol.cut_ratio=0.3"),
    ("model.server_conditioning=labels", "sample.clip=none"),
])  # fmt: skip
def test_the_pipeline_draws_what_the_old_sampling_path_drew(overrides):
    cfg = tiny_config(*overrides)
    server, clients = random_models(cfg)
    pipe = CollaFusePipeline.from_parts(cfg, server, clients)
    secrets = [11, 12]
    assert_same(pipe(3, 4, client_secrets=secrets), reference_sample(server, clients, cfg, 3, 4, cfg.sample.batch_size,
                                                                      secrets))  # fmt: skip


@pytest.mark.parametrize("t_c", [0, 20])
def test_edge_cuts(t_c):
    """c = 0: the server runs every step and its output is the sample; c = 1: nothing crosses,
    each client runs every step from its own noise."""
    cfg = tiny_config("sample.batch_size=2")
    server, clients = random_models(cfg)
    cut = Cut.from_config(cfg).with_t_c(t_c)
    pipe = CollaFusePipeline.from_parts(cfg, server, clients, cut=cut)
    out = pipe(3, 2)
    assert_same(out, reference_sample(server, clients, cfg, 3, 2, 2, cut=cut))
    if t_c == 0:
        assert torch.equal(out.raw, out.handovers)
    else:
        assert out.handovers is None and pipe.handovers(3, 2, clients=2) is None


def test_the_halves_apart_are_the_whole(tmp_path):
    """Flower's server (no client model) and clients (no server model), each its half."""
    cfg = tiny_config("sample.batch_size=2", "protocol.cut_ratio=0.4")
    server, clients = random_models(cfg)
    whole = CollaFusePipeline.from_parts(cfg, server, clients)(3, 9, client_secrets=[5, 6])
    h = server_handovers(server, cfg, 2, 3, 9, "cpu", 2, (1, 8, 8))
    assert torch.equal(h, whole.handovers)
    for k, model in enumerate(clients):
        raw = client_finish(model, cfg, h[k], 3, client_sample_generator(9, k, 5 + k), "cpu", 2, (1, 8, 8))
        assert torch.equal(raw, whole.raw[k])
    # a half saves and loads alone too: the server's pipeline holds no client
    CollaFusePipeline.from_parts(cfg, server, []).save_pretrained(tmp_path / "server")
    alone = CollaFusePipeline.from_pretrained(tmp_path / "server")
    assert alone.clients == [] and torch.equal(alone.handovers(3, 9, clients=2), h)


def test_what_does_not_fit_is_refused(tmp_path):
    cfg = tiny_config()
    cut = Cut.from_config(cfg)
    with pytest.raises(UserError, match="does not step the chain"):
        Sampler(cut, "x0", DDPMScheduler(num_train_timesteps=cut.T))  # diffusers' defaults: another chain
    with pytest.raises(UserError, match="not a saved pipeline"):
        CollaFusePipeline.from_pretrained(tmp_path)
    server, clients = random_models(cfg)
    with pytest.raises(UserError, match="client secrets"):
        CollaFusePipeline.from_parts(cfg, server, clients)(2, 0, client_secrets=[1])
