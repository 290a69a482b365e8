"""DP-SGD step time over plain step time for the default client model.

Default client model: configs/default.yaml (preset ``tiny``, 16x16, 1 channel, batch 64).
Both paths run side by side in one process on the same batches: a plain
:class:`collafuse_privacy.party.Party` step (Adam, ``train.grad_clip``) and the same
Party made private with Opacus (per-sample gradients, clipping, noise, accountant step),
for each grad-sample mode that works on diffusers' UNet.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_dp.py [--batch 64] [--reps 20] [--device cpu]

Target: DP/plain at most 2.0x. Prints one line per mode (and Opacus' fast-gradient and ghost clipping,
measured here only) and the fastest mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from collafuse_privacy.config import load_config
from collafuse_privacy.defenses.dp_sgd import GRAD_SAMPLE_MODES
from collafuse_privacy.models import build_unet
from collafuse_privacy.party import Party


def _party(cfg, device, mode=None, batch=64):
    torch.manual_seed(0)
    model = build_unet(cfg.model.client_preset or cfg.model.preset, cfg.data.image_size, 1)
    party = Party(model, cfg.train, device)
    if mode is not None:
        party.make_private(noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch, sample_rate=0.05,
                           accountant=cfg.defense.client_dp.accountant, grad_sample_mode=mode,
                           generator=torch.Generator(device=device).manual_seed(0))  # fmt: skip
    return party


class _FastClipping:
    """Opacus' fast gradient clipping (``ghost=False``: per-sample gradients, two backward passes) or
    ghost clipping (``ghost=True``: per-sample gradient norms without the gradients where a layer has a
    norm sampler; Opacus 1.6 has them for Linear and Embedding, the UNet's convolutions fall back to
    per-sample gradients), with noise and Adam as the DP party; not wired into training (see the
    printout)."""

    def __init__(self, cfg, device, batch, ghost: bool):
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping

        from collafuse_privacy.defenses.dp_sgd import contiguous_conv_inputs

        torch.manual_seed(0)
        model = build_unet(cfg.model.client_preset or cfg.model.preset, cfg.data.image_size, 1).to(device)
        contiguous_conv_inputs(model)
        self.gsm = GradSampleModuleFastGradientClipping(model, batch_first=True, loss_reduction="mean",
                                                        max_grad_norm=1.0, use_ghost_clipping=ghost)  # fmt: skip
        self.opt = DPOptimizerFastGradientClipping(torch.optim.Adam(model.parameters(), lr=cfg.train.lr),
                                                   noise_multiplier=1.0, max_grad_norm=1.0,
                                                   expected_batch_size=batch, loss_reduction="mean")  # fmt: skip

    def train_step(self, x, t, n):
        from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

        from collafuse_privacy.diffusion import p_losses

        self.opt.zero_grad()
        per_image = p_losses(self.gsm, x, t, n)
        DPTensorFastGradientClipping(self.gsm, self.opt, per_image, "mean").backward()
        self.opt.step()


def _time(party, batches, device) -> float:
    out = []
    for x, t, n in batches:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        party.train_step(x, t, n)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out[2:])  # first steps warm up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size (64)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = load_config(None, [])
    device = torch.device(args.device)
    B, S = args.batch or cfg.train.batch_size, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(B, 1, S, S, generator=g).to(device), torch.randint(0, cfg.diffusion.timesteps, (B,), generator=g).to(device),
         torch.randn(B, 1, S, S, generator=g).to(device))
        for _ in range(args.reps + 2)
    ]  # fmt: skip
    print(f"client model: preset {cfg.model.preset}, {S}x{S}x1, batch {B}, device {device}, "
          f"threads {torch.get_num_threads()}, median of {args.reps} steps")  # fmt: skip
    parties = {"plain": _party(cfg, device)} | {m: _party(cfg, device, m, B) for m in GRAD_SAMPLE_MODES}
    extra = {}
    for name, ghost in (("fast-clip", False), ("ghost", True)):
        try:
            extra[name] = _FastClipping(cfg, device, B, ghost)
            extra[name].train_step(*batches[0])
        except Exception as e:  # a mode Opacus cannot run on this model is reported, not hidden
            print(f"  {name}: fails on diffusers' UNet: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            extra.pop(name, None)
    parties |= extra
    # interleave the rounds so drift in machine load hits every mode alike
    times: dict[str, list[float]] = {k: [] for k in parties}
    for r in range(3):
        for name, party in parties.items():
            times[name].append(_time(party, batches, device))
    best = {k: min(v) for k, v in times.items()}
    base = best["plain"]
    print(f"  plain step: {base * 1e3:8.1f} ms")
    for m in GRAD_SAMPLE_MODES:
        print(f"  DP-SGD ({m:9s}): {best[m] * 1e3:8.1f} ms  ratio {best[m] / base:5.2f}x  (target <= 2.0x)")
    for m in extra:
        print(f"  DP-SGD ({m:9s}): {best[m] * 1e3:8.1f} ms  ratio {best[m] / base:5.2f}x  (bench only, not a "
              "defense.client_dp.grad_sample_mode)")
    fastest = min(GRAD_SAMPLE_MODES, key=best.get)
    print(f"fastest grad_sample_mode: {fastest} ({best[fastest] / base:.2f}x)")
    print("not run: 'ew' (expanded weights) fails on diffusers' UNet (ModelMixin.dtype calls is_floating_point)")


if __name__ == "__main__":
    main()
